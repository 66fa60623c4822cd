"""The probes of scripts/abuse-server.sh against a running lse-serve (loopback).

Arguments: HTTP address, gRPC address, the server's pid, the work folder (token file,
model folder), then the flags the server runs with: queue, max connections, max body
MiB, max pixels, max request pixels, max answer MiB. Prints one row per probe: the
answer, the server's peak RSS during the probe (VmHWM, reset before it) and the bound.
"""

import http.client
import io
import json
import os
import socket
import statistics
import sys
import threading
import time

import numpy as np
from PIL import Image

addr, grpc_addr, pid, work = sys.argv[1:5]
queue, max_conn, max_body, max_pix, max_req_pix, max_ans = map(float, sys.argv[5:11])
host, port = addr.rsplit(":", 1)
port = int(port)
ghost, gport = grpc_addr.rsplit(":", 1)
gport = int(gport)
token = open(os.path.join(work, "token")).read().strip()
MiB = 1 << 20


def status_kib(key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def reset_peak():
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def fds():
    return len(os.listdir(f"/proc/{pid}/fd"))


idle = status_kib("VmRSS") / 1024
bound = (
    idle
    + max_conn * max_body
    + queue * min(max_pix, max_req_pix) * 20 / MiB
    + queue * max_ans
)


def request(method, path, body=None, headers=None, timeout=120):
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def code_of(data):
    try:
        v = json.loads(data)
        return v.get("error") if "detail" in v else v.get("code", v.get("error"))
    except Exception:
        return f"{len(data)} bytes"


def png(w, h, mode="RGB"):
    out = io.BytesIO()
    Image.new(mode, (w, h)).save(out, "PNG")
    return out.getvalue()


def bytes_tensor(images):
    data = b"".join(len(p).to_bytes(4, "little") + p for p in images)
    return data


def v2_images(images, output, binary):
    data = bytes_tensor(images)
    head = json.dumps({
        "inputs": [{"name": "image", "shape": [len(images)], "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(data)}}],
        "outputs": [{"name": output, "parameters": {"binary_data": binary}}],
    }).encode()
    return head + data, {"Inference-Header-Content-Length": str(len(head))}


def parallel(n, fn):
    out = [None] * n
    def run(i):
        try:
            out[i] = fn(i)
        except Exception as e:
            out[i] = type(e).__name__
    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


def tally(items):
    counts = {}
    for x in items:
        counts[x] = counts.get(x, 0) + 1
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items(), key=str))


def p_symlink():
    s, d = request("POST", "/v1/models/evil/load", headers={"Authorization": f"Bearer {token}"})
    return f"{s} {code_of(d)}; path leaked: {work in d.decode(errors='replace')}"


def p_no_token():
    s, d = request("POST", "/v1/models/default/load")
    return f"{s} {code_of(d)}"


def p_long_name():
    s, d = request("POST", "/v1/models/" + "n" * 20000 + "/load",
                   headers={"Authorization": f"Bearer {token}"})
    return f"{s} {code_of(d)}, answer {len(d)} bytes"


def series():
    _, d = request("GET", "/metrics")
    return sum(1 for l in d.decode().splitlines() if l.startswith("lse_http_requests_total{"))


def p_labels():
    s = socket.create_connection((host, port))
    f = s.makefile("rb")

    def one(line):
        s.sendall(f"{line} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        length = 0
        while True:
            h = f.readline()
            if h in (b"\r\n", b""):
                break
            if h.lower().startswith(b"content-length:"):
                length = int(h.split(b":")[1])
        f.read(length)

    kinds = lambda i: (f"M{i}X /healthz", f"GET /nope/{i}", f"GET /v1/model?model=m{i}")
    for line in kinds(0):  # each kind's series once, before counting
        one(line)
    series()
    before = series()
    for i in range(1, 1001):
        for line in kinds(i):
            one(line)
    s.close()
    return f"3,000 requests: series {before} -> {series()}"


def wait_closed(socks, limit):
    """How many of `socks` the server closes within `limit` seconds."""
    deadline = time.time() + limit
    closed = 0
    for s in socks:
        s.settimeout(max(0.01, deadline - time.time()))
        try:
            while s.recv(4096):
                pass
            closed += 1
        except ConnectionResetError:
            closed += 1
        except OSError:
            pass
        s.close()
    return closed


def p_half_prefaces():
    t0 = time.time()
    socks = []
    for _ in range(300):
        s = socket.create_connection((ghost, gport))
        s.sendall(b"PRI * HTTP/2.0\r\n")
        socks.append(s)
    peak = fds()
    closed = wait_closed(socks, 40)
    return f"{closed} of 300 closed in {time.time() - t0:.1f} s; server fds <= {peak}"


def p_silent():
    before = fds()
    socks = [socket.create_connection((ghost, gport)) for _ in range(500)]
    time.sleep(1)
    peak = fds()
    closed = wait_closed(socks, 40)
    return f"server fds {before} -> {peak} with 500 connected; {closed} closed by the server"


def p_scores_json():
    body, h = v2_images([png(1, 1)] * 64, "scores", False)
    s, d = request("POST", "/v2/models/default/infer", body, h)
    return f"{len(body)}-byte request: {s} {code_of(d)}, answer {len(d)} bytes"


def p_batches():
    body, h = v2_images([png(64, 32)] * 12, "labels", True)
    res = parallel(3, lambda i: request("POST", "/v2/models/default/infer", body, h)[0])
    return f"3 x 12 images (queue {int(queue)}): {tally(res)}"


def big_json():
    n = (19 * MiB) // 2 // 3 * 3
    w = 2048
    h = n // 3 // w
    vals = ",".join(["0"] * (h * w * 3))
    return ('{"inputs":[{"name":"image_rgb","datatype":"UINT8","shape":[1,%d,%d,3],"data":[%s]}]}'
            % (h, w, vals)).encode()


BIG_JSON = big_json()


def p_json():
    s, d = request("POST", "/v2/models/default/infer", BIG_JSON)
    return f"{len(BIG_JSON) / MiB:.0f} MiB JSON: {s} {code_of(d) if s != 200 else 'ok'}"


def p_json_healthz():
    stop = threading.Event()
    lat = []
    def ping():
        c = http.client.HTTPConnection(host, port, timeout=60)
        while not stop.is_set():
            t = time.perf_counter()
            c.request("GET", "/healthz")
            c.getresponse().read()
            lat.append((time.perf_counter() - t) * 1000)
            time.sleep(0.005)
    t = threading.Thread(target=ping)
    t.start()
    res = parallel(16, lambda i: request("POST", "/v2/models/default/infer", BIG_JSON)[0])
    stop.set()
    t.join()
    lat.sort()
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return (f"16 x {len(BIG_JSON) / MiB:.0f} MiB JSON: {tally(res)}; /healthz p50 "
            f"{statistics.median(lat):.1f} ms, p99 {p99:.1f} ms ({len(lat)} pings)")


def p_grpc_empties():
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc
    req = service_pb2.ModelInferRequest(model_name="default")
    i = req.inputs.add(name="image", datatype="BYTES", shape=[9_000_000])
    i.contents.bytes_contents.extend([b""] * 9_000_000)
    size = req.ByteSize()
    ch = grpc.insecure_channel(grpc_addr, options=[("grpc.max_send_message_length", -1)])
    stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
    try:
        stub.ModelInfer(req, timeout=120)
        out = "OK"
    except grpc.RpcError as e:
        out = f"{e.code().name}: {e.details()[:70]}"
    ch.close()
    return f"{size / MiB:.0f} MiB message: {out}"


def p_grpc_too_large():
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc
    req = service_pb2.ModelInferRequest(model_name="default")
    i = req.inputs.add(name="image", datatype="BYTES", shape=[1])
    req.raw_input_contents.append(b"\0" * int((max_body + 1) * MiB))
    ch = grpc.insecure_channel(grpc_addr, options=[("grpc.max_send_message_length", -1)])
    try:
        service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=60)
        out = "OK"
    except grpc.RpcError as e:
        out = e.code().name
    ch.close()
    return out


def p_huge_pngs():
    big = png(8000, 5000, "L")
    res = parallel(16, lambda i: request("POST", "/v1/segment", big)[0])
    return f"16 x 40-megapixel PNG ({len(big) // 1024} KiB): {tally(res)}"


def p_early_4xx():
    body = b"\0" * (15 * MiB)
    c = http.client.HTTPConnection(host, port, timeout=120)
    out = []
    for method, path in [("POST", "/v1/segment?model=nope"), ("POST", "/v1/segment?output=x"),
                         ("POST", "/nope"), ("PUT", "/v1/segment")]:
        try:
            c.request(method, path, body=body)
            r = c.getresponse()
            d = r.read()
            out.append(f"{r.status} {code_of(d)}{' (closed)' if r.will_close else ''}")
        except Exception as e:
            out.append(type(e).__name__)
    return "; ".join(out)


BREAK_MODEL = """
import sys, numpy as np, onnx
from onnx import helper, numpy_helper
m = onnx.load(sys.argv[1])
g = m.graph
for n in g.node:
    n.output[:] = ["scores_pre" if o == "scores" else o for o in n.output]
    n.input[:] = ["scores_pre" if i == "scores" else i for i in n.input]
g.initializer.append(numpy_helper.from_array(np.array([7, -1, 3, 5], dtype=np.int64), "bad_shape"))
g.node.append(helper.make_node("Reshape", ["scores_pre", "bad_shape"], ["scores"]))
for o in g.output:
    if o.name == "scores":
        o.type.tensor_type.ClearField("shape")
onnx.save(m, sys.argv[2])
"""


def p_warm_up_failure():
    import subprocess
    bad = os.path.join(work, "models", "bad")
    os.makedirs(bad, exist_ok=True)
    subprocess.run([sys.executable, "-c", BREAK_MODEL, os.path.join(work, "models/default/model.onnx"),
                    os.path.join(bad, "model.onnx")], check=True)
    t = time.time()
    s, d = request("POST", "/v1/models/bad/load", headers={"Authorization": f"Bearer {token}"})
    return f"{s} {code_of(d)} after {time.time() - t:.1f} s"


PROBES = [
    ("load through a link out of --model-dir", p_symlink),
    ("load without the admin token", p_no_token),
    ("20,000-character model name", p_long_name),
    ("1,000 methods, routes, model names", p_labels),
    ("300 half-sent HTTP/2 prefaces (gRPC)", p_half_prefaces),
    ("500 silent gRPC connections", p_silent),
    ("64 one-pixel PNGs, scores as JSON", p_scores_json),
    ("3 concurrent 12-image requests", p_batches),
    ("19 MiB JSON of numbers", p_json),
    ("16 x 19 MiB JSON + /healthz", p_json_healthz),
    ("gRPC: 9 M empty bytes_contents", p_grpc_empties),
    ("gRPC: message over --max-body-mb", p_grpc_too_large),
    ("16 x 40-megapixel PNGs", p_huge_pngs),
    ("15 MiB bodies to early 4xx (http.client)", p_early_4xx),
    ("load of a model failing warm-up", p_warm_up_failure),
]

print(f"idle RSS {idle:.0f} MiB; bound {bound:.0f} MiB = idle + {max_conn:.0f} x {max_body:.0f} MiB"
      f" + {queue:.0f} x {min(max_pix, max_req_pix) / 1e6:.0f} Mpx x 20 B + {queue:.0f} x {max_ans:.0f} MiB")
print()
print("| probe | answer | peak RSS (MiB) | bound (MiB) |")
print("| --- | --- | ---: | ---: |")
worst = 0.0
for name, fn in PROBES:
    reset_peak()
    try:
        answer = fn()
    except Exception as e:  # a probe that breaks is reported, not fatal
        answer = f"probe failed: {type(e).__name__}: {e}"
    peak = status_kib("VmHWM") / 1024
    worst = max(worst, peak)
    print(f"| {name} | {answer} | {peak:.0f} | {bound:.0f} |", flush=True)
print()
print(f"worst peak {worst:.0f} MiB of a {bound:.0f} MiB bound: {'held' if worst <= bound else 'EXCEEDED'}")
