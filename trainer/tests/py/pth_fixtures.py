"""Checkpoints for trainer/tests/it/pth.rs, written by the venv's real PyTorch.

Usage: pth_fixtures.py OUT_DIR

Every file comes in both torch.save formats: NAME.zip.pth (the zip archive, the default
since PyTorch 1.6) and NAME.legacy.pth (`_use_new_zipfile_serialization=False`, the
format of PyTorch 0.1.10 to 1.5 and of torchvision's ImageNet VGG16). Each NAME has a
reference REF.safetensors written with `safetensors.torch.save_file`, which the Rust
test reads with tch's own (independent) safetensors reader.

- Dtypes and layouts: views, tied weights, half, bfloat16, bool, ints, scalars, empty
  tensors (`dtypes`), nested in training checkpoints, parameters.
- Networks: the reference FCN8s (`fcn8s_reference.FCN8s`, width 1/8) as a plain state
  dict, wrapped under `state_dict` and under `model` with nn.DataParallel's `module.`
  prefix, and an old-style file whose tensors use `torch._utils._rebuild_tensor` as
  PyTorch < 0.4 wrote them; a torchvision-layout VGG16 whose convolutions and linear
  layers hold the same FCN8s's conv1_1..fc7. `fcn8s_io.safetensors` holds a network
  input `x` and PyTorch's logits `y`, `fcn8s_scores.safetensors` the score layers.
"""
import json
import os
import pickle
import sys
import types
import warnings
import zipfile

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fcn8s_reference import FCN8s  # noqa: E402

out = sys.argv[1]
warnings.filterwarnings("ignore", message="TypedStorage is deprecated")


def save(obj, name, **kw):
    torch.save(obj, f"{out}/{name}.zip.pth", **kw)
    torch.save(obj, f"{out}/{name}.legacy.pth", _use_new_zipfile_serialization=False, **kw)


def reference(d, name):
    save_file({k: v.contiguous().clone() for k, v in d.items()}, f"{out}/{name}.safetensors")
    json.dump(list(d.keys()), open(f"{out}/{name}.keys.json", "w"))


# --- dtypes and layouts -------------------------------------------------------------
torch.manual_seed(0)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(5, 6)
        self.head = nn.Linear(5, 6)
        self.head.weight = self.fc.weight  # tied: two keys, one storage
        self.register_buffer("transposed", torch.randn(4, 6).t())
        self.register_buffer("strided", torch.arange(20.0)[3:17:3])  # offset + stride
        self.register_buffer("expanded", torch.randn(3, 1).expand(3, 4))  # stride 0
        self.register_buffer("h16", torch.randn(2, 3).half())
        self.register_buffer("h16_t", torch.randn(3, 5).half().t())
        self.register_buffer("bf16", torch.randn(3, 2).bfloat16())
        self.register_buffer("mask", torch.tensor([True, False, True]))
        self.register_buffer("scalar", torch.tensor(2.5, dtype=torch.float64))
        self.register_buffer("empty", torch.zeros(0, 3))
        self.register_buffer("ints", torch.arange(6, dtype=torch.int32).reshape(2, 3)[:, 1:])
        self.register_buffer("bytes", torch.arange(5, dtype=torch.uint8))
        self.register_buffer("i8", torch.tensor([-3, 4], dtype=torch.int8))
        self.register_buffer("i16", torch.tensor([-300, 400], dtype=torch.int16))


net = Net()
net.train()
net.bn(torch.randn(2, 4, 5, 5))  # running stats and num_batches_tracked (int64) move
sd = net.state_dict()
assert not sd["transposed"].is_contiguous()
reference(sd, "dtypes")
save(sd, "dtypes")
save(dict(sd), "dtypes_dict", pickle_protocol=4)
other = Net()
opt = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
other.fc(torch.randn(2, 5)).sum().backward()
opt.step()
save(
    {
        "epoch": 7,
        "optimizer": opt.state_dict(),  # tensors under int keys: never the state dict
        "model": sd,
        "best_miou": np.float64(0.5),
        "args": types.SimpleNamespace(lr=0.1, name="x"),
        "history": [1.5, 2.5, None, (1, 2)],
        "big": 2**70,
    },
    "training",
)
params = dict(net.named_parameters())  # nn.Parameter: torch._utils._rebuild_parameter
reference(params, "params")
save(params, "params")

f8 = torch.randn(3, 4).to(torch.float8_e4m3fn).t()  # _rebuild_tensor_v3, UntypedStorage
torch.save({"f8": f8}, f"{out}/f8.zip.pth")
save_file({"f8": f8.contiguous().view(torch.uint8)}, f"{out}/f8.safetensors")

save({"u16": torch.zeros(3, dtype=torch.uint16)}, "uint16")
save({"q": torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.qint8)}, "quantized")
save({"epoch": 3, "lr": 0.1}, "no_tensors")
save([torch.ones(2)], "list")
save({"a": {"w": torch.ones(2)}, "b": {"w": torch.zeros(2)}}, "ambiguous")
save(nn.Linear(2, 2), "whole_module")


def rewrite(src, dst, edit):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info.filename, data)


# A zip file as a big-endian machine writes it (all float32 storages).
be = {"w": torch.randn(3, 4).t(), "v": torch.arange(5.0)}
torch.save(be, f"{out}/le.zip.pth")
reference(be, "be")


def to_big(name, data):
    if name.endswith("/byteorder"):
        return b"big"
    if "/data/" in name:
        return np.frombuffer(data, dtype="<f4").astype(">f4").tobytes()
    return data


rewrite(f"{out}/le.zip.pth", f"{out}/be.zip.pth", to_big)
rewrite(f"{out}/dtypes.zip.pth", f"{out}/storage_short.zip.pth",
        lambda n, d: d[: len(d) // 2] if n.endswith("/data/0") else d)
rewrite(f"{out}/dtypes.zip.pth", f"{out}/storage_missing.zip.pth",
        lambda n, d: None if n.endswith("/data/0") else d)
rewrite(f"{out}/dtypes.zip.pth", f"{out}/byteorder_bad.zip.pth",
        lambda n, d: b"middle" if n.endswith("/byteorder") else d)

# --- networks -----------------------------------------------------------------------
torch.manual_seed(7)
fcn = FCN8s(19, 0.125).eval()
sd = fcn.state_dict()
x = torch.randn(1, 3, 37, 53) * 60.0
with torch.no_grad():
    y = fcn(x)
save_file({"x": x.contiguous(), "y": y.contiguous()}, f"{out}/fcn8s_io.safetensors")
save_file({k: v.contiguous() for k, v in sd.items() if k.startswith("score_")},
          f"{out}/fcn8s_scores.safetensors")
save(sd, "fcn8s")
save({"state_dict": sd, "epoch": 3, "best": 0.4}, "fcn8s_state_dict")
save({"model": {f"module.{k}": v for k, v in sd.items()}, "iteration": 100}, "fcn8s_model")


class OldPickler(pickle.Pickler):
    """Pickles tensors as PyTorch < 0.4 did: _rebuild_tensor(storage, offset, size, stride)."""

    def reducer_override(self, obj):
        if isinstance(obj, torch.Tensor):
            return (torch._utils._rebuild_tensor,
                    (obj.storage(), obj.storage_offset(), tuple(obj.size()), obj.stride()))
        return NotImplemented


old_pickle = types.ModuleType("old_pickle")
old_pickle.Pickler, old_pickle.dump, old_pickle.__version__ = OldPickler, pickle.dump, "0"
torch.save(sd, f"{out}/fcn8s_old.legacy.pth", pickle_module=old_pickle,
           _use_new_zipfile_serialization=False)

# torchvision's VGG16 layout holding the FCN8s's backbone and fc6/fc7 (as linear layers).
convs = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
         "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"]
idx = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
vgg = {}
for n, i in zip(convs, idx):
    vgg[f"features.{i}.weight"], vgg[f"features.{i}.bias"] = sd[f"{n}.weight"], sd[f"{n}.bias"]
for n, i in (("fc6", 0), ("fc7", 3)):
    w = sd[f"{n}.weight"]
    vgg[f"classifier.{i}.weight"] = w.reshape(w.shape[0], -1).clone()
    vgg[f"classifier.{i}.bias"] = sd[f"{n}.bias"]
vgg["classifier.6.weight"] = torch.randn(1000, sd["fc7.weight"].shape[0])
vgg["classifier.6.bias"] = torch.randn(1000)
save(vgg, "vgg16")
print("ok")
