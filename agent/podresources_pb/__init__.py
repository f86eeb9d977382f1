"""The kubelet's pod-resources v1 API, generated from api.proto (see regenerate.py for how).

api_pb2.py and api_pb2_grpc.py are protoc output, checked in so that the agent needs only
grpcio and protobuf at run time; do not edit them, regenerate them.
"""
