"""The Open Inference Protocol of a running lse-serve, through the official clients
(tritonclient[http] and tritonclient[grpc]). Driven by server/tests/it/v2.rs, which starts
the server and passes, as one JSON argument: the HTTP and gRPC addresses, PNG images
and the labelIds PNGs `lse segment` wrote for them. Exits non-zero on the first
disagreement, naming it."""

import json
import sys
import urllib.request

import grpc
import numpy as np
from PIL import Image
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

MODEL = "default"


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def expect_error(fn, status, needle):
    """fn() must raise InferenceServerException with this status and message part."""
    try:
        fn()
    except InferenceServerException as e:
        check(str(e.status()) == status, f"status {e.status()!r}, want {status!r}: {e}")
        check(needle in e.message(), f"{needle!r} not in {e.message()!r}")
        return
    raise AssertionError(f"no error, want {status} with {needle!r}")


def png_bytes_input(mod, paths):
    arr = np.array([open(p, "rb").read() for p in paths], dtype=np.object_)
    i = mod.InferInput("image", [len(paths)], "BYTES")
    i.set_data_from_numpy(arr)
    return i


def pixels(paths):
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def check_metadata_http(c, n_classes, train_size):
    check(c.is_server_live() and c.is_server_ready(), "server live and ready")
    check(c.is_model_ready(MODEL), "model ready")
    check(not c.is_model_ready(MODEL, "7"), "version 7 is not served")
    meta = c.get_server_metadata()
    check("binary_tensor_data" in meta["extensions"], f"server metadata {meta}")
    m = c.get_model_metadata(MODEL)
    check(m["name"] == MODEL and m["versions"] == ["1"], f"model metadata {m}")
    ins = {t["name"]: (t["datatype"], t["shape"]) for t in m["inputs"]}
    outs = {t["name"]: (t["datatype"], t["shape"]) for t in m["outputs"]}
    check(ins == {"image": ("BYTES", [-1]), "image_rgb": ("UINT8", [-1, -1, -1, 3])}, f"inputs {ins}")
    w, h = train_size
    check(outs["labels"] == ("UINT8", [-1, -1, -1]), f"outputs {outs}")
    check(outs["scores"] == ("FP32", [-1, n_classes, h, w]), f"outputs {outs}")


def check_infer_http(c, a, images, refs, n_classes, train_size):
    # JSON tensors both ways: UINT8 pixels in, labels out.
    i = thttp.InferInput("image_rgb", [1, *pixels(images[:1]).shape[1:]], "UINT8")
    i.set_data_from_numpy(pixels(images[:1]), binary_data=False)
    o = thttp.InferRequestedOutput("labels", binary_data=False)
    r = c.infer(MODEL, [i], outputs=[o], request_id="req-1")
    check(r.get_response()["id"] == "req-1", "the request id comes back")
    check(r.get_response()["outputs"][0].get("data") is not None, "JSON output data")
    check(np.array_equal(r.as_numpy("labels")[0], refs[0]), "JSON labels == lse segment")
    # Binary data both ways: encoded PNGs in, a batch of label maps and scores out.
    outs = [thttp.InferRequestedOutput("labels"), thttp.InferRequestedOutput("scores")]
    r = c.infer(MODEL, [png_bytes_input(thttp, images)], outputs=outs)
    labels = r.as_numpy("labels")
    check(labels.dtype == np.uint8 and labels.shape == (len(images), *refs[0].shape), f"labels {labels.shape}")
    for k, ref in enumerate(refs):
        check(np.array_equal(labels[k], ref), f"binary labels of image {k} == lse segment")
    w, h = train_size
    scores = r.as_numpy("scores")
    check(scores.dtype == np.float32 and scores.shape == (len(images), n_classes, h, w), f"scores {scores.shape}")
    check(np.isfinite(scores).all(), "finite scores")
    # No outputs named: labels; train ids by a request parameter.
    r = c.infer(MODEL, [png_bytes_input(thttp, images[:1])], parameters={"ids": "train"})
    train = r.as_numpy("labels")[0]
    check(train.max() < n_classes and not np.array_equal(train, refs[0]), "train ids")
    # A batch of pixel images equals the batch of encoded ones.
    i = thttp.InferInput("image_rgb", list(pixels(images).shape), "UINT8")
    i.set_data_from_numpy(pixels(images))
    r = c.infer(MODEL, [i])
    check(np.array_equal(r.as_numpy("labels"), labels), "UINT8 batch == BYTES batch")
    # /v1 gives the same label map.
    req = urllib.request.Request(f"http://{a}/v1/segment", data=open(images[0], "rb").read())
    with urllib.request.urlopen(req) as resp:
        v1 = np.asarray(Image.open(resp))
    check(np.array_equal(v1, labels[0]), "v2 labels == /v1 labelids")
    return train


def check_bad_http(c, images):
    f32 = thttp.InferInput("image", [1], "FP32")
    f32.set_data_from_numpy(np.zeros([1], np.float32))
    expect_error(lambda: c.infer(MODEL, [f32]), "400", "must be BYTES")
    px = pixels(images[:1])[0][:, :, :2].copy()
    bad = thttp.InferInput("image_rgb", list(px.shape), "UINT8")
    bad.set_data_from_numpy(px)
    expect_error(lambda: c.infer(MODEL, [bad]), "400", "[H, W, 3]")
    expect_error(lambda: c.infer("nope", [png_bytes_input(thttp, images[:1])]), "404", "no model named `nope`")
    expect_error(lambda: c.get_model_metadata("nope"), "404", "nope")
    out = [thttp.InferRequestedOutput("logits")]
    expect_error(lambda: c.infer(MODEL, [png_bytes_input(thttp, images[:1])], outputs=out), "400", "unknown output `logits`")
    junk = np.array([b"hello"], dtype=np.object_)
    j = thttp.InferInput("image", [1], "BYTES")
    j.set_data_from_numpy(junk)
    expect_error(lambda: c.infer(MODEL, [j]), "400", "not a PNG or JPEG")


def check_grpc(addr, images, refs, train, n_classes):
    c = tgrpc.InferenceServerClient(url=addr)
    check(c.is_server_live() and c.is_server_ready() and c.is_model_ready(MODEL), "gRPC health")
    m = c.get_model_metadata(MODEL, as_json=True)
    check([t["name"] for t in m["inputs"]] == ["image", "image_rgb"], f"gRPC metadata {m}")
    check(c.get_server_metadata().name == "lse-serve", "gRPC server metadata")
    outs = [tgrpc.InferRequestedOutput("labels"), tgrpc.InferRequestedOutput("scores")]
    r = c.infer(MODEL, [png_bytes_input(tgrpc, images)], outputs=outs)
    for k, ref in enumerate(refs):
        check(np.array_equal(r.as_numpy("labels")[k], ref), f"gRPC labels of image {k} == lse segment")
    check(r.as_numpy("scores").shape[:2] == (len(images), n_classes), "gRPC scores")
    i = tgrpc.InferInput("image_rgb", list(pixels(images).shape), "UINT8")
    i.set_data_from_numpy(pixels(images))
    r = c.infer(MODEL, [i], parameters={"ids": "train"})
    check(np.array_equal(r.as_numpy("labels")[0], train), "gRPC train ids == HTTP train ids")
    f32 = tgrpc.InferInput("image", [1], "FP32")
    f32.set_data_from_numpy(np.zeros([1], np.float32))
    expect_error(lambda: c.infer(MODEL, [f32]), "StatusCode.INVALID_ARGUMENT", "must be BYTES")
    expect_error(lambda: c.infer("nope", [png_bytes_input(tgrpc, images[:1])]), "StatusCode.NOT_FOUND", "nope")
    check_grpc_typed_contents(addr, images, refs)


def check_grpc_typed_contents(addr, images, refs):
    """Typed contents (uint_contents, bytes_contents) instead of raw bytes, by the stub."""
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(addr))
    px = pixels(images[:1])
    req = service_pb2.ModelInferRequest(model_name=MODEL)
    t = req.inputs.add(name="image_rgb", datatype="UINT8", shape=list(px.shape))
    t.contents.uint_contents.extend(px.flatten().tolist())
    r = stub.ModelInfer(req)
    got = np.frombuffer(r.raw_output_contents[0], np.uint8).reshape(r.outputs[0].shape)
    check(np.array_equal(got[0], refs[0]), "gRPC uint_contents labels == lse segment")
    req = service_pb2.ModelInferRequest(model_name=MODEL)
    t = req.inputs.add(name="image", datatype="BYTES", shape=[1])
    t.contents.bytes_contents.append(open(images[0], "rb").read())
    r = stub.ModelInfer(req)
    got = np.frombuffer(r.raw_output_contents[0], np.uint8).reshape(r.outputs[0].shape)
    check(np.array_equal(got[0], refs[0]), "gRPC bytes_contents labels == lse segment")


def main():
    args = json.loads(sys.argv[1])
    images, refs = args["images"], [np.asarray(Image.open(p)) for p in args["labels"]]
    n_classes, train_size = args["classes"], args["train_size"]
    c = thttp.InferenceServerClient(url=args["http"])
    check_metadata_http(c, n_classes, train_size)
    train = check_infer_http(c, args["http"], images, refs, n_classes, train_size)
    check_bad_http(c, images)
    if args.get("grpc"):
        check_grpc(args["grpc"], images, refs, train, n_classes)
    print("tritonclient checks passed")


if __name__ == "__main__":
    main()
