"""The wire contract between agent and collector: topics and message encode/decode. Pure, no I/O.

Topics (MQTT v5, QoS 1):
    gpufleet/v1/<cluster>/<node>/telemetry   one message per node per window
    gpufleet/v1/<cluster>/<node>/state       retained: online on connect, offline as the last will
    gpufleet/v1/<cluster>/<node>/events      XID, double-bit ECC, row-remap failure, GPU lost

Collectors answer on `gpufleet/ack/v1/<cluster>/<node>` (outside the telemetry subscription) with
the sequence numbers of the node's windows and the digests (`event_digest`) of its events that are
now stored in InfluxDB; an agent keeps a window or event in its spool, and sends it again, until
one collector has said so.

Payloads are MessagePack maps; a telemetry payload is also zlib-compressed (RFC 1950: its first
byte is 0x78, which no MessagePack map starts with, so either form is read). Telemetry carries each
window's field ids, models and workloads once, and one row of integers ("wire units", see
metrics.csv `wire_scale` and `wire_id`) per GPU, so a GPU-window costs little more than its numbers:

    {"v": 2, "cluster": "c1", "node": "n1", "seq": 42, "t0": <ms>, "t1": <ms>,
     "fields": [1, 4, ...],                      # metrics.csv wire_id of each value's field
     "models": ["NVIDIA H100 80GB HBM3"],
     "workloads": [["slurm:123", {"kind": "slurm_job", "job": "123", ...}], ...],
     "gpus": [[index, uuid, model#, [values...],
               [workload#, sm_util_centi, mem_bytes, workload#, ...],   # holders, three numbers each
               [workload#, ...],                                         # owners
               [mig_instance_id, slices, gpu_slices]  # only for a MIG instance, whose index is its GPU's
              ], ...]}

`#` is a position in "models" or "workloads". A field the GPU does not support is nil (absent),
never zero; a field id this side does not know (a newer agent) decodes as `wire_id_<n>`, which
the collector skips and counts. Version 1 (field names, workloads by key, uncompressed) is still
read, so that windows spooled by an older agent are not lost in an upgrade.

A GPU's holders are the workloads whose processes ran on it in the window; its owners are the
workloads the node's scheduler allocated it to (job-mapping directory, static map), which pay
for it even when nothing runs (idle waste). Both name entries of "workloads".

`decode_*` never raises anything but `Rejected`, whose `reason` is one of REJECT_REASONS: the
collector counts rejections per reason, so the set is fixed and small.
"""

from __future__ import annotations

import hashlib
import os
import re
import zlib
from dataclasses import dataclass, field
from itertools import chain, compress
from typing import Any, NamedTuple

import msgpack

from gpufleet.catalogue import gpu_window_field_by_name, gpu_window_field_by_wire_id

# C fast paths of the collector's loops (gpufleet/native.c); the Python here stays the definition.
# GPUFLEET_NATIVE=0 runs that Python instead: the same lines, at about half the speed (for a
# suspected fault in the C, and for the test that holds both paths equal).
_native: Any = None
if os.environ.get("GPUFLEET_NATIVE", "1") != "0":
    try:
        from gpufleet import _native
    except ImportError:  # not built (no compiler at install)
        pass
NATIVE_CORE = _native is not None

PROTOCOL_VERSION = 1  # events, state and stored confirmations
TELEMETRY_VERSION = 2  # telemetry written; versions 1 and 2 are read
UNKNOWN_FIELD_PREFIX = "wire_id_"  # a field id this side does not know decodes as wire_id_<n>
ZLIB_LEVEL = 6  # level 9 saves under 1 % more here, for 10 % more agent CPU
TOPIC_ROOT = "gpufleet/v1"
MAX_MESSAGE_BYTES = 1 << 20  # a node of 8 GPUs sends ~2 kB; 1 MiB leaves room for 64 GPUs with MIG
MAX_GPUS = 256
MAX_FIELDS = 256
MAX_HOLDERS = 256
MAX_WORKLOADS = 1024
MAX_IDENTITY_KEYS = 16
MAX_DETAIL_CHARS = 512
MAX_FUTURE_MS = 5 * 60 * 1000  # clocks drift; a window from further ahead is a bug or a lie
MAX_PAST_MS = 7 * 24 * 3600 * 1000  # spooled windows older than a week are refused
MAX_ABS_INT = (1 << 63) - 1  # InfluxDB integers are signed 64-bit
MAX_HOLDER_MEMORY = 1 << 48  # 256 TiB per process: 256 holders still sum inside 64 bits

EVENT_KINDS = frozenset({"xid", "ecc_dbe", "remap_failure", "gpu_lost"})
NODE_STATES = frozenset({"online", "offline"})

REJECT_REASONS = (
    "too_large",  # payload over MAX_MESSAGE_BYTES
    "malformed",  # not MessagePack, or not a map
    "version",  # protocol version we do not speak
    "bad_topic",  # topic outside gpufleet/v1/<cluster>/<node>/<kind>
    "topic_mismatch",  # payload's cluster/node differ from the topic's
    "schema",  # a required key missing or of the wrong type
    "bad_name",  # cluster, node, uuid, model or workload outside the allowed characters
    "timestamp",  # window or event too far in the future or the past, or t1 <= t0
    "limits",  # too many GPUs, fields, holders, workloads
    "bad_value",  # a value that is not an integer within 64 bits
)

# Names that become InfluxDB tags or MQTT topic levels: no separators, no wildcards, no escapes.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_UUID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,95}")
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._()/+-]{0,95}")  # "NVIDIA H100 80GB HBM3"
# Workload keys never become tags; `\` appears in escaped systemd unit names (foo\x2dbar.service).
_WORKLOAD = re.compile(r"[A-Za-z0-9][A-Za-z0-9:/._@+\\-]{0,127}")
_FIELD = re.compile(r"[a-z][a-z0-9_]{0,63}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Rejected(ValueError):
    """The sender's fault: the message breaks the contract. `reason` is one of REJECT_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REJECT_REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# ----------------------------------------------------------------------------------------- topics


def telemetry_topic(cluster: str, node: str) -> str:
    return f"{TOPIC_ROOT}/{cluster}/{node}/telemetry"


def state_topic(cluster: str, node: str) -> str:
    return f"{TOPIC_ROOT}/{cluster}/{node}/state"


def events_topic(cluster: str, node: str) -> str:
    return f"{TOPIC_ROOT}/{cluster}/{node}/events"


def stored_topic(cluster: str, node: str) -> str:
    return f"gpufleet/ack/v1/{cluster}/{node}"


def subscription(group: str, cluster: str = "+") -> str:
    """MQTT v5 shared subscription: the broker hands each message to one collector of the group;
    all clusters, or one (a database per cluster shards a fleet past one InfluxDB)."""
    return f"$share/{group}/{TOPIC_ROOT}/{cluster}/+/#"


@dataclass(frozen=True, slots=True)
class Topic:
    cluster: str
    node: str
    kind: str  # telemetry | state | events


# Topics already parsed: a node publishes on the same three. Bounded, emptied when full.
_TOPICS: dict[str, Topic] = {}
_TOPICS_MAX = 1 << 17  # three a node: a 200,000-GPU fleet has 25,000 nodes


def parse_topic(topic: str) -> Topic:
    found = _TOPICS.get(topic)
    if found is None:
        found = _parse_topic(topic)
        if len(_TOPICS) >= _TOPICS_MAX:
            _TOPICS.clear()
        _TOPICS[topic] = found
    return found


def _parse_topic(topic: str) -> Topic:
    parts = topic.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != TOPIC_ROOT:
        raise Rejected("bad_topic", f"not {TOPIC_ROOT}/<cluster>/<node>/<kind>: {topic[:200]!r}")
    cluster, node, kind = parts[2], parts[3], parts[4]
    if kind not in ("telemetry", "state", "events"):
        raise Rejected("bad_topic", f"unknown message kind {kind[:64]!r}")
    _check_name("cluster", cluster)
    _check_name("node", node)
    return Topic(cluster, node, kind)


def check_name(what: str, value: str) -> str:
    """Validate a cluster or node name for use in topics and tags (agents call this at start)."""
    _check_name(what, value)
    return value


def _check_name(what: str, value: Any, pattern: re.Pattern[str] = _NAME) -> None:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise Rejected("bad_name", f"{what} {str(value)[:80]!r} must match {pattern.pattern}")


# ------------------------------------------------------------------------------ message types


# Holder and GpuWindow are NamedTuples, not frozen dataclasses: a collector makes ~3 per
# GPU-window, and a tuple is made several times faster.
class Holder(NamedTuple):
    """A workload holding a GPU in the window, with what the driver said of its share."""

    workload: str  # key into TelemetryWindow.workloads
    sm_util_centi: int | None  # mean SM utilisation in 0.01 % units; None: no per-process samples
    mem_bytes: int | None  # peak used memory; None: the driver does not say


class GpuWindow(NamedTuple):
    index: int
    uuid: str
    model: str
    values: tuple[int | None, ...]  # aligned with TelemetryWindow.fields; None = absent
    holders: tuple[Holder, ...] = ()
    owners: tuple[str, ...] = ()  # workloads the scheduler allocated this GPU to
    mig: tuple[int, int, int] | None = None  # a MIG instance: (instance id, its compute slices, the GPU's)

    @property
    def tag(self) -> str:
        """The `gpu` tag: "3" for GPU 3, "3-mig1" for MIG instance 1 on it."""
        return str(self.index) if self.mig is None else f"{self.index}-mig{self.mig[0]}"


@dataclass(frozen=True, slots=True)
class TelemetryWindow:
    cluster: str
    node: str
    seq: int
    t0_ms: int
    t1_ms: int
    fields: tuple[str, ...]
    gpus: tuple[GpuWindow, ...]
    workloads: dict[str, dict[str, str | int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GpuEventMessage:
    cluster: str
    node: str
    time_ms: int
    gpu: int
    uuid: str
    kind: str  # one of EVENT_KINDS
    code: int
    detail: str = ""


@dataclass(frozen=True, slots=True)
class NodeState:
    cluster: str
    node: str
    state: str  # online | offline
    time_ms: int | None  # None in the last will: the broker sends it later, the receiver stamps it


# --------------------------------------------------------------------------------------- encode


def _pack(obj: dict[str, Any]) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def encode_telemetry(window: TelemetryWindow) -> bytes:
    """A version 2 telemetry payload: compressed MessagePack, names and identities once per message."""
    workload_number = {key: number for number, key in enumerate(window.workloads)}
    models = list(dict.fromkeys(gpu.model for gpu in window.gpus))
    model_number = {model: number for number, model in enumerate(models)}
    message = {
        "v": TELEMETRY_VERSION,
        "cluster": window.cluster,
        "node": window.node,
        "seq": window.seq,
        "t0": window.t0_ms,
        "t1": window.t1_ms,
        "fields": [_wire_id(name) for name in window.fields],
        "models": models,
        "workloads": [[key, identity] for key, identity in window.workloads.items()],
        "gpus": [_gpu_row(gpu, model_number, workload_number) for gpu in window.gpus],
    }
    return zlib.compress(_pack(message), ZLIB_LEVEL)


def _wire_id(name: str) -> int:
    """The field's id; `wire_id_<n>` (how an unknown id decodes) is n again."""
    metric = gpu_window_field_by_name().get(name)
    if metric is not None and metric.wire_id is not None:
        return metric.wire_id
    if name.startswith(UNKNOWN_FIELD_PREFIX) and name[len(UNKNOWN_FIELD_PREFIX) :].isdigit():
        return int(name[len(UNKNOWN_FIELD_PREFIX) :])
    raise ValueError(f"field {name!r} has no wire_id in metrics.csv")


def _gpu_row(gpu: GpuWindow, model_number: dict[str, int], workload_number: dict[str, int]) -> list[Any]:
    holders = []
    for holder in gpu.holders:
        holders += (workload_number[holder.workload], holder.sm_util_centi, holder.mem_bytes)
    row = [gpu.index, gpu.uuid, model_number[gpu.model], list(gpu.values), holders, [workload_number[o] for o in gpu.owners]]
    if gpu.mig is not None:
        row.append(list(gpu.mig))
    return row


def encode_event(event: GpuEventMessage) -> bytes:
    return _pack(
        {
            "v": PROTOCOL_VERSION,
            "cluster": event.cluster,
            "node": event.node,
            "t": event.time_ms,
            "gpu": event.gpu,
            "uuid": event.uuid,
            "kind": event.kind,
            "code": event.code,
            "detail": event.detail[:MAX_DETAIL_CHARS],
        }
    )


def encode_state(state: NodeState) -> bytes:
    message: dict[str, Any] = {"v": PROTOCOL_VERSION, "cluster": state.cluster, "node": state.node, "state": state.state}
    if state.time_ms is not None:
        message["t"] = state.time_ms
    return _pack(message)


# --------------------------------------------------------------------------------------- decode


def _inflate(payload: bytes) -> bytes:
    """The MessagePack inside a zlib stream, or the payload itself when it is plain MessagePack.
    Bounded: a small stream that inflates past MAX_MESSAGE_BYTES is refused, not expanded."""
    if payload[:1] != b"\x78":
        return payload
    inflater = zlib.decompressobj()
    try:
        plain = inflater.decompress(payload, MAX_MESSAGE_BYTES)
    except zlib.error as exc:
        raise Rejected("malformed", f"not a zlib stream: {exc}") from None
    if inflater.unconsumed_tail:
        raise Rejected("too_large", f"inflates past {MAX_MESSAGE_BYTES} bytes")
    if not inflater.eof or inflater.unused_data:
        raise Rejected("malformed", "zlib stream truncated or followed by other bytes")
    return plain


def _unpack(payload: bytes, topic: Topic, versions: tuple[int, ...] = (PROTOCOL_VERSION,)) -> dict[str, Any]:
    if len(payload) > MAX_MESSAGE_BYTES:
        raise Rejected("too_large", f"{len(payload)} bytes > {MAX_MESSAGE_BYTES}")
    try:
        message = msgpack.unpackb(_inflate(payload), raw=False, strict_map_key=True, use_list=True)
    except Rejected:
        raise
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise Rejected("malformed", f"not MessagePack: {type(exc).__name__}") from None
    if not isinstance(message, dict):
        raise Rejected("malformed", f"top level is {type(message).__name__}, not a map")
    if message.get("v") not in versions or type(message.get("v")) is not int:
        raise Rejected("version", f"protocol version {str(message.get('v'))[:20]!r}, expected one of {versions}")
    if message.get("cluster") != topic.cluster or message.get("node") != topic.node:
        raise Rejected(
            "topic_mismatch",
            f"payload says {str(message.get('cluster'))[:64]!r}/{str(message.get('node'))[:64]!r}, "
            f"topic says {topic.cluster}/{topic.node}",
        )
    return message


def _get(message: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = message.get(key)
    # bool is an int subclass; a boolean where a number belongs is a schema error
    if not isinstance(value, kind) or isinstance(value, bool):
        raise Rejected("schema", f"{key!r} must be {_type_names(kind)}, got {type(value).__name__}")
    return value


def _type_names(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _check_time(what: str, time_ms: int, now_ms: int) -> None:
    if time_ms > now_ms + MAX_FUTURE_MS or time_ms < now_ms - MAX_PAST_MS:
        raise Rejected("timestamp", f"{what}={time_ms} is too far from now={now_ms}")


def _check_int(value: Any) -> int | None:
    if value is None:
        return None
    if type(value) is not int or not -MAX_ABS_INT <= value <= MAX_ABS_INT:
        raise Rejected("bad_value", f"value {str(value)[:40]!r} is not a 64-bit integer")
    return value


_NONE = type(None)
_INT_OR_NONE = frozenset({int, _NONE})
_INT = frozenset({int})


def _check_values(values: list[Any]) -> tuple[int | None, ...]:
    """tuple(_check_int(v) for v in values), with the common case checked in C: every value an int
    or None, the ints within 64 bits. Otherwise the loop finds and names the first bad value."""
    kinds = set(map(type, values))
    if kinds <= _INT_OR_NONE:
        present = [v for v in values if v is not None] if _NONE in kinds else values
        if not present or (-MAX_ABS_INT <= min(present) and max(present) <= MAX_ABS_INT):
            return tuple(values)
    return tuple(_check_int(v) for v in values)


# Field lists already found valid: an agent sends the same list in every message, so checking its
# 40-odd names each time is wasted. Small and bounded: a fleet runs a few agent versions at a time.
_VALID_FIELDS: set[tuple[str, ...]] = set()
_VALID_FIELDS_MAX = 64


def _decode_fields(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_FIELDS:
        raise Rejected("limits", f"'fields' must be a list of at most {MAX_FIELDS} names")
    fields = tuple(raw)
    try:
        if fields in _VALID_FIELDS:
            return fields
    except TypeError:
        pass  # an unhashable "name": the checks below reject it
    for name in raw:
        _check_name("field", name, _FIELD)
    if len(set(raw)) != len(raw):
        raise Rejected("schema", "'fields' repeats a name")
    if len(_VALID_FIELDS) < _VALID_FIELDS_MAX:
        _VALID_FIELDS.add(fields)
    return fields


def _decode_holder(raw: Any, workloads: dict[str, Any]) -> Holder:
    if not isinstance(raw, list) or len(raw) != 3:
        raise Rejected("schema", "a holder must be [workload, sm_util_centi, mem_bytes]")
    workload, sm_util, mem = raw
    if not isinstance(workload, str) or workload not in workloads:
        raise Rejected("schema", f"holder names workload {str(workload)[:80]!r} missing from 'workloads'")
    return _holder(workload, sm_util, mem)


def _holder(workload: str, sm_util: Any, mem: Any) -> Holder:
    sm_util, mem = _check_int(sm_util), _check_int(mem)
    # Bounded so that sums over a GPU's holders stay far inside 64 bits.
    if sm_util is not None and not 0 <= sm_util <= 10_000:
        raise Rejected("bad_value", f"holder SM utilisation {sm_util} is not 0..10000 (0.01 %)")
    if mem is not None and not 0 <= mem <= MAX_HOLDER_MEMORY:
        raise Rejected("bad_value", f"holder memory {mem} is not 0..{MAX_HOLDER_MEMORY} bytes")
    return Holder(workload, sm_util, mem)


def _decode_gpu(raw: Any, field_count: int, workloads: dict[str, Any]) -> GpuWindow:
    if not isinstance(raw, list) or len(raw) not in (4, 5, 6, 7):
        raise Rejected("schema", "a GPU must be [index, uuid, model, values, holders, owners, mig]")
    index, uuid, model, values = raw[:4]
    if type(index) is not int or not 0 <= index < MAX_GPUS:
        raise Rejected("schema", f"GPU index {str(index)[:20]!r} is not 0..{MAX_GPUS - 1}")
    _check_name("uuid", uuid, _UUID)
    _check_name("model", model, _MODEL)
    if not isinstance(values, list) or len(values) != field_count:
        raise Rejected("schema", f"GPU {index} has {_len(values)} values for {field_count} fields")
    holders_raw = raw[4] if len(raw) > 4 else []
    owners_raw = raw[5] if len(raw) > 5 else []
    for name, items in (("holders", holders_raw), ("owners", owners_raw)):
        if not isinstance(items, list) or len(items) > MAX_HOLDERS:
            raise Rejected("limits", f"GPU {index} {name} must be a list of at most {MAX_HOLDERS}")
    for owner in owners_raw:
        if not isinstance(owner, str) or owner not in workloads:
            raise Rejected("schema", f"owner {str(owner)[:80]!r} missing from 'workloads'")
    return GpuWindow(
        index=index,
        uuid=uuid,
        model=model,
        values=_check_values(values),
        holders=tuple(_decode_holder(h, workloads) for h in holders_raw),
        owners=tuple(owners_raw),
        mig=_decode_mig(raw[6]) if len(raw) > 6 else None,
    )


def _decode_mig(raw: Any) -> tuple[int, int, int]:
    if (
        not isinstance(raw, list)
        or len(raw) != 3
        or not all(type(v) is int for v in raw)
        or not (0 <= raw[0] < 64 and 1 <= raw[1] <= raw[2] <= 8)
    ):
        raise Rejected("schema", "mig must be [instance id 0..63, slices, GPU slices <= 8]")
    return raw[0], raw[1], raw[2]


def _len(value: Any) -> str:
    return str(len(value)) if isinstance(value, list) else "no list of"


# The last identity found valid for each workload key, copied (no caller holds it): a job's
# identity comes back every window, and comparing with the last one is cheaper than any hashing.
# Equal is not enough, since 1 == 1.0 == True: the values must also be of the types that pass
# _check_identity (str, int, None), and then each equals a value that passed it, so passes too.
_VALID_IDENTITIES: dict[str, dict[str, str | int | None]] = {}
_IDENTITY_VALUE_TYPES = frozenset({str, int, type(None)})


def _decode_identity(key: Any, identity: Any) -> dict[str, str | int]:
    if (
        type(key) is str
        and type(identity) is dict
        and _VALID_IDENTITIES.get(key) == identity
        and _IDENTITY_VALUE_TYPES.issuperset(map(type, identity.values()))
    ):
        return identity
    _check_identity(key, identity)
    if len(_VALID_IDENTITIES) >= _VALID_MAX:
        _VALID_IDENTITIES.clear()
    _VALID_IDENTITIES[key] = dict(identity)
    return identity


def _check_identity(key: Any, identity: Any) -> None:
    _check_name("workload", key, _WORKLOAD)
    if not isinstance(identity, dict) or len(identity) > MAX_IDENTITY_KEYS:
        raise Rejected("limits", f"identity of {key!r} must be a map of at most {MAX_IDENTITY_KEYS} keys")
    for name, value in identity.items():
        if type(name) is not str or name not in _VALID_IDENTITY_KEYS:  # a few names, in every identity
            _check_name("identity key", name, _FIELD)
            _remember(_VALID_IDENTITY_KEYS, name)
        if isinstance(value, str):
            if len(value) > 256 or _CONTROL.search(value):
                raise Rejected("bad_name", f"identity {key!r}.{name} is too long or has control characters")
        elif value is not None:
            _check_int(value)


def _decode_workloads(raw: Any) -> dict[str, dict[str, str | int]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > MAX_WORKLOADS:
        raise Rejected("limits", f"'workloads' must be a map of at most {MAX_WORKLOADS} entries")
    return {key: _decode_identity(key, identity) for key, identity in raw.items()}


def decode_telemetry(payload: bytes, topic: Topic, now_ms: int) -> TelemetryWindow:
    message = _unpack(payload, topic, (1, TELEMETRY_VERSION))
    seq, t0, t1 = _decode_window_times(message, now_ms)
    gpus_raw = message.get("gpus")
    if not isinstance(gpus_raw, list) or len(gpus_raw) > MAX_GPUS:
        raise Rejected("limits", f"'gpus' must be a list of at most {MAX_GPUS}")
    if message["v"] == 1:
        fields = _decode_fields(message.get("fields"))
        workloads = _decode_workloads(message.get("workloads"))
        gpus = tuple(_decode_gpu(g, len(fields), workloads) for g in gpus_raw)
    else:
        fields = _decode_field_ids(message.get("fields"))
        models = _decode_models(message.get("models"))
        keys, workloads = _decode_workload_list(message.get("workloads"))
        gpus = _decode_gpu_rows(gpus_raw, len(fields), models, keys)
    return TelemetryWindow(topic.cluster, topic.node, seq, t0, t1, fields, gpus, workloads)


def _decode_window_times(message: dict[str, Any], now_ms: int) -> tuple[int, int, int]:
    seq = _get(message, "seq", int)
    t0 = _get(message, "t0", int)
    t1 = _get(message, "t1", int)
    if not 0 <= seq <= MAX_ABS_INT:
        raise Rejected("bad_value", f"seq {seq} out of range")
    if t1 <= t0:
        raise Rejected("timestamp", f"window ends ({t1}) before it starts ({t0})")
    _check_time("t1", t1, now_ms)
    _check_time("t0", t0, now_ms)
    return seq, t0, t1


# Field id lists already decoded (see _VALID_FIELDS): ids -> names.
_FIELD_NAMES: dict[tuple[int, ...], tuple[str, ...]] = {}


def _decode_field_ids(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_FIELDS:
        raise Rejected("limits", f"'fields' must be a list of at most {MAX_FIELDS} field ids")
    if _INT.issuperset(map(type, raw)):  # ints only: 1.0 and True would find the names of 1
        names = _FIELD_NAMES.get(tuple(raw))
        if names is not None:
            return names
    if not all(type(i) is int and 0 < i <= 0xFFFF for i in raw):
        raise Rejected("schema", "'fields' must hold field ids 1..65535")
    if len(set(raw)) != len(raw):
        raise Rejected("schema", "'fields' repeats a field id")
    known = gpu_window_field_by_wire_id()
    names = tuple(known[i].name if i in known else f"{UNKNOWN_FIELD_PREFIX}{i}" for i in raw)
    if len(_FIELD_NAMES) < _VALID_FIELDS_MAX:
        _FIELD_NAMES[tuple(raw)] = names
    return names


def _decode_models(raw: Any) -> list[str]:
    if not isinstance(raw, list) or len(raw) > MAX_GPUS:
        raise Rejected("limits", f"'models' must be a list of at most {MAX_GPUS} names")
    for model in raw:
        if type(model) is not str or model not in _VALID_MODELS:  # (a list would not even hash)
            _check_name("model", model, _MODEL)
            _remember(_VALID_MODELS, model)
    return raw


def _decode_workload_list(raw: Any) -> tuple[list[str], dict[str, dict[str, str | int]]]:
    """'workloads' as [[key, identity], ...]: the keys by position, and the identities by key.
    In C when every identity is one already found valid (the usual message)."""
    if _native is not None:
        known = _native.known_workloads(raw, _VALID_IDENTITIES)
        if known is not None:
            return known
    if not isinstance(raw, list) or len(raw) > MAX_WORKLOADS:
        raise Rejected("limits", f"'workloads' must be a list of at most {MAX_WORKLOADS} entries")
    workloads: dict[str, dict[str, str | int]] = {}
    for entry in raw:
        if not isinstance(entry, list) or len(entry) != 2:
            raise Rejected("schema", "a workload must be [key, identity]")
        key, identity = entry
        workloads[key] = _decode_identity(key, identity)
    if len(workloads) != len(raw):
        raise Rejected("schema", "'workloads' repeats a key")
    return list(workloads), workloads


def _decode_gpu_rows(rows: list[Any], field_count: int, models: list[str], keys: list[str]) -> tuple[GpuWindow, ...]:
    """Every GPU row of a message: in C when built and every row passes (it checks what the
    Python below checks, and declines with None whatever that would not accept), else in Python,
    which accepts the same or raises the Rejected that names the fault."""
    if _native is not None:
        gpus = _native.gpu_rows(rows, field_count, models, keys, GpuWindow, Holder)
        if gpus is not None:
            return gpus
    return _decode_gpu_rows_in_python(rows, field_count, models, keys)


def _decode_gpu_rows_in_python(rows: list[Any], field_count: int, models: list[str], keys: list[str]) -> tuple[GpuWindow, ...]:
    """Each row's shape is checked on its own; the numbers of all rows together, one pass each in
    C (values, holders, owners), since they are almost always right; only a message that fails
    that is checked again row by row, to name the bad number."""
    for raw in rows:
        _check_row_shape(raw, field_count, len(models))
    values = list(chain.from_iterable([raw[3] for raw in rows]))
    holders = list(chain.from_iterable([raw[4] for raw in rows]))
    workload_numbers = holders[0::3] + list(chain.from_iterable([raw[5] for raw in rows]))  # holders' and owners'
    if not (
        _within(values, MAX_ABS_INT, -MAX_ABS_INT)
        and _within(workload_numbers, len(keys) - 1, allow_none=False)
        and _within(holders[1::3], 10_000)
        and _within(holders[2::3], MAX_HOLDER_MEMORY)
    ):
        return tuple(_decode_gpu_row(raw, models, keys) for raw in rows)
    return tuple(
        [
            _new_tuple(
                GpuWindow,
                (
                    raw[0],
                    raw[1],
                    models[raw[2]],
                    tuple(raw[3]),
                    _holders_of(raw[4], keys),
                    tuple(map(keys.__getitem__, raw[5])),
                    _decode_mig(raw[6]) if len(raw) > 6 else None,
                ),
            )
            for raw in rows
        ]
    )


# GpuWindow(...) and Holder(...) without the Python function that NamedTuple puts in front of
# tuple.__new__: the same tuple, made a few times a GPU-window. Only for fields already checked.
_new_tuple = tuple.__new__


def _holders_of(flat: list[Any], keys: list[str]) -> tuple[Holder, ...]:
    """Holders from checked [workload#, sm_util_centi, mem_bytes, ...]."""
    if len(flat) == 3:  # one workload on the GPU: the usual case
        return (_new_tuple(Holder, (keys[flat[0]], flat[1], flat[2])),)
    return tuple([_new_tuple(Holder, holder) for holder in zip(map(keys.__getitem__, flat[0::3]), flat[1::3], flat[2::3])])


def _check_row_shape(raw: Any, field_count: int, model_count: int) -> None:
    if not isinstance(raw, list) or len(raw) not in (6, 7):
        raise Rejected("schema", "a GPU must be [index, uuid, model#, values, holders, owners, mig]")
    index, uuid, model, values, holders, owners = raw[:6]
    if type(index) is not int or not 0 <= index < MAX_GPUS:
        raise Rejected("schema", f"GPU index {str(index)[:20]!r} is not 0..{MAX_GPUS - 1}")
    if type(uuid) is not str or uuid not in _VALID_UUIDS:  # (a list would not even hash)
        _check_name("uuid", uuid, _UUID)
        _remember(_VALID_UUIDS, uuid)
    if type(model) is not int or not 0 <= model < model_count:
        raise Rejected("schema", f"GPU {index} model# {str(model)[:20]!r} is not a position in 'models'")
    if not isinstance(values, list) or len(values) != field_count:
        raise Rejected("schema", f"GPU {index} has {_len(values)} values for {field_count} fields")
    if not isinstance(holders, list) or len(holders) > 3 * MAX_HOLDERS or len(holders) % 3:
        raise Rejected("limits", f"GPU {index} holders must be a list of at most {MAX_HOLDERS} triples")
    if not isinstance(owners, list) or len(owners) > MAX_HOLDERS:
        raise Rejected("limits", f"GPU {index} owners must be a list of at most {MAX_HOLDERS}")


def _decode_gpu_row(raw: list[Any], models: list[str], keys: list[str]) -> GpuWindow:
    """One row whose shape passed, its numbers checked one by one: raises naming the bad one."""
    holders = raw[4]
    return GpuWindow(
        raw[0],
        raw[1],
        models[raw[2]],
        tuple(_check_int(value) for value in raw[3]),
        tuple(_holder(_workload_at(keys, holders[i]), holders[i + 1], holders[i + 2]) for i in range(0, len(holders), 3)),
        tuple(_workload_at(keys, owner) for owner in raw[5]),
        _decode_mig(raw[6]) if len(raw) > 6 else None,
    )


# GPU UUIDs, model names and identity keys already found valid: the same GPUs and jobs come back
# every window. Bounded, emptied when full.
_VALID_UUIDS: set[Any] = set()
_VALID_MODELS: set[Any] = set()
_VALID_IDENTITY_KEYS: set[Any] = set()
_VALID_MAX = 1 << 18


def _remember(valid: set[Any], value: Any) -> None:
    if len(valid) >= _VALID_MAX:
        valid.clear()
    valid.add(value)


def _within(values: list[Any], top: int, bottom: int = 0, *, allow_none: bool = True) -> bool:
    """Every value an int in bottom..top (bool excluded), or None where allowed (then bottom <= 0 <= top)."""
    kinds = set(map(type, values))
    if not kinds <= (_INT_OR_NONE if allow_none else _INT):
        return False
    # compress() drops the Nones in C, and the zeros with them, which are within any range here.
    present = list(compress(values, values)) if _NONE in kinds else values
    return not present or (bottom <= min(present) and max(present) <= top)


def _workload_at(keys: list[str], number: Any) -> str:
    if type(number) is not int or not 0 <= number < len(keys):
        raise Rejected("schema", f"workload# {str(number)[:20]!r} is not a position in 'workloads'")
    return keys[number]


class Stored(NamedTuple):
    """What a collector confirms stored for one node: window sequence numbers and event digests."""

    seqs: list[int]
    events: list[int]  # event_digest of each event


def event_digest(payload: bytes) -> int:
    """An event's name in stored confirmations: 64 bits of BLAKE2b of the bytes the agent sent. A
    resend carries the same bytes, so the same name; events need no numbering of their own."""
    return int.from_bytes(hashlib.blake2b(payload, digest_size=8).digest(), "big")


def encode_stored(seqs: list[int], events: list[int] | None = None) -> bytes:
    message: dict[str, Any] = {"v": PROTOCOL_VERSION, "seqs": sorted(seqs)}
    if events:  # left out when empty: what collectors sent before events were confirmed
        message["events"] = sorted(events)
    return _pack(message)


def decode_stored(payload: bytes) -> Stored:
    """What a collector stored; the agent side of `encode_stored`."""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise Rejected("too_large", f"{len(payload)} bytes")
    try:
        message = msgpack.unpackb(payload, raw=False)
    except Exception:  # msgpack raises several unrelated types for bad input
        raise Rejected("malformed", "not MessagePack") from None
    if not isinstance(message, dict) or message.get("v") != PROTOCOL_VERSION:
        raise Rejected("version", "not a version 1 stored acknowledgement")
    seqs = message.get("seqs")
    if not isinstance(seqs, list) or not all(type(s) is int and 0 <= s <= MAX_ABS_INT for s in seqs):
        raise Rejected("schema", "'seqs' must be a list of sequence numbers")
    events = message.get("events", [])
    if not isinstance(events, list) or not all(type(e) is int and 0 <= e < 1 << 64 for e in events):
        raise Rejected("schema", "'events' must be a list of 64-bit event digests")
    return Stored(seqs, events)


def decode_event(payload: bytes, topic: Topic, now_ms: int) -> GpuEventMessage:
    message = _unpack(payload, topic)
    time_ms = _get(message, "t", int)
    _check_time("t", time_ms, now_ms)
    gpu = _get(message, "gpu", int)
    if not 0 <= gpu < MAX_GPUS:
        raise Rejected("schema", f"GPU index {gpu} is not 0..{MAX_GPUS - 1}")
    uuid = message.get("uuid")
    _check_name("uuid", uuid, _UUID)
    kind = message.get("kind")
    if not isinstance(kind, str) or kind not in EVENT_KINDS:
        raise Rejected("schema", f"event kind {str(kind)[:40]!r} is not one of {sorted(EVENT_KINDS)}")
    code = _check_int(_get(message, "code", int))
    detail = message.get("detail", "")
    if not isinstance(detail, str) or len(detail) > MAX_DETAIL_CHARS or _CONTROL.search(detail):
        raise Rejected("schema", f"'detail' must be text of at most {MAX_DETAIL_CHARS} printable characters")
    return GpuEventMessage(topic.cluster, topic.node, time_ms, gpu, uuid, kind, code, detail)


def decode_state(payload: bytes, topic: Topic, now_ms: int) -> NodeState:
    message = _unpack(payload, topic)
    state = message.get("state")
    if not isinstance(state, str) or state not in NODE_STATES:
        raise Rejected("schema", f"state {str(state)[:40]!r} is not online or offline")
    time_ms = message.get("t")
    # A retained state may be months old and still true, so only the future is refused here.
    if time_ms is not None and not 0 <= _get(message, "t", int) <= now_ms + MAX_FUTURE_MS:
        raise Rejected("timestamp", f"t={time_ms} is before 1970 or in the future (now={now_ms})")
    return NodeState(topic.cluster, topic.node, state, time_ms)
