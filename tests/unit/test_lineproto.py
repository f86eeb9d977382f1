"""Line protocol: one rule per test, exact strings."""

from gpufleet.collector import lineproto
from gpufleet.wire import GpuEventMessage, GpuWindow, NodeState, TelemetryWindow

T0 = 1_767_225_590_000


def one_gpu(fields, values, model="NVIDIA H100 80GB HBM3") -> TelemetryWindow:
    return TelemetryWindow("c1", "n1", 5, T0, T0 + 10_000, tuple(fields), (GpuWindow(2, "GPU-ab", model, tuple(values)),))


def lines(window):
    plan, _ = lineproto.field_plan(window.fields)
    return lineproto.gpu_lines(window, plan)


def test_gpu_point_has_sorted_tags_scaled_floats_ints_and_window_start_in_ns():
    window = one_gpu(["power_w", "temp_gpu_c", "util_gpu_pct"], [312460, 61, 9550])
    assert lines(window) == [
        r"gpu,cluster=c1,gpu=2,model=NVIDIA\ H100\ 80GB\ HBM3,node=n1,uuid=GPU-ab "
        "power_w=312460e-3,temp_gpu_c=61i,util_gpu_pct=9550e-2,seq=5i,window_s=10.0 1767225590000000000"
    ]


def test_scaled_floats_are_the_same_doubles_as_their_decimal_form():
    """`312460e-3` is read (Go ParseFloat, Rust f64 parse, Python float) as the double nearest
    312.46, the same one `312.46` gives: the wire integer and its exponent lose nothing."""
    for value, divisor in [(312460, 1000), (9550, 100), (1, 1000), (-1500, 1000), (2**53 - 1, 1000), (7, 100)]:
        assert float(f"{value}{lineproto.value_suffix(divisor)}") == float(repr(value / divisor))


def test_absent_values_are_left_out_not_zero():
    window = one_gpu(["power_w", "temp_mem_c"], [70000, None], model="T4")
    assert lines(window) == ["gpu,cluster=c1,gpu=2,model=T4,node=n1,uuid=GPU-ab power_w=70000e-3,seq=5i,window_s=10.0 1767225590000000000"]


def test_unknown_fields_are_skipped_and_reported():
    plan, unknown = lineproto.field_plan(("power_w", "from_the_future"))
    assert [name for _, name, _ in plan] == ["power_w"]
    assert unknown == ["from_the_future"]


def test_tag_escaping_table():
    assert lineproto.tag("a b,c=d\\e") == r"a\ b\,c\=d\\e"


def test_string_field_escaping():
    assert lineproto.string_field('say "hi" \\ bye') == r'"say \"hi\" \\ bye"'


def test_event_point():
    event = GpuEventMessage("c1", "n1", T0, 3, "GPU-ab", "xid", 79, 'GPU has fallen off the bus "really"')
    assert lineproto.event_line(event) == (
        r'gpu_event,cluster=c1,gpu=3,kind=xid,node=n1,uuid=GPU-ab code=79i,detail="GPU has fallen off the bus \"really\"" '
        "1767225590000000000"
    )


def test_last_will_state_takes_the_receive_time():
    assert lineproto.state_line(NodeState("c1", "n1", "offline", None), T0) == (
        'node_state,cluster=c1,node=n1 online=0i,state="offline" 1767225590000000000'
    )


def test_stats_point():
    assert lineproto.stats_line("collector", {"collector": "c-1"}, {"b": 2, "a": 1}, T0) == (
        "collector,collector=c-1 a=1i,b=2i 1767225590000000000"
    )
