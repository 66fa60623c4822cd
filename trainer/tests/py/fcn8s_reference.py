"""Independent reference for the spine tests: the FCN8s of docs/method.md written in plain
PyTorch (after the reference implementation's layout), a torchvision-layout VGG16,
and checks of exported ONNX files with the onnx package and python onnxruntime.

Usage:
  fcn8s_reference.py fcn8s OUT_DIR WIDTH     reference FCN8s with random weights:
      OUT_DIR/fcn8s.pth (plain torch.save(model.state_dict())), OUT_DIR/io.safetensors
      (input `x`, BGR mean-subtracted 1x3x37x53, and PyTorch's logits `y`)
  fcn8s_reference.py vgg16 OUT_DIR WIDTH      OUT_DIR/vgg16.pth, torchvision layout
  fcn8s_reference.py check-vgg16 VGG_PTH CKPT WIDTH   the checkpoint's conv1_1..fc7 equal
      the VGG16 weights (fc6/fc7 reshaped from the linear layers)
  fcn8s_reference.py onnx-check MODEL        onnx.checker full check + strict shape inference
  fcn8s_reference.py ort-ids MODEL IMAGE OUT  python onnxruntime train ids -> label ids PNG
  fcn8s_reference.py no-metadata OUT          a valid ONNX model without LSE metadata
"""
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def ch(c, width):
    return max(1, int(round(c * width)))


def upsampling_weight(channels, k):
    factor = (k + 1) // 2
    center = factor - 1 if k % 2 == 1 else factor - 0.5
    og = np.ogrid[:k, :k]
    filt = (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)
    w = np.zeros((channels, channels, k, k), dtype=np.float32)
    w[range(channels), range(channels), :, :] = filt
    return torch.from_numpy(w)


class FCN8s(nn.Module):
    def __init__(self, n_class=19, width=1.0):
        super().__init__()
        c64, c128, c256, c512, c4096 = (ch(c, width) for c in (64, 128, 256, 512, 4096))
        self.conv1_1 = nn.Conv2d(3, c64, 3, padding=100)
        self.conv1_2 = nn.Conv2d(c64, c64, 3, padding=1)
        self.conv2_1 = nn.Conv2d(c64, c128, 3, padding=1)
        self.conv2_2 = nn.Conv2d(c128, c128, 3, padding=1)
        self.conv3_1 = nn.Conv2d(c128, c256, 3, padding=1)
        self.conv3_2 = nn.Conv2d(c256, c256, 3, padding=1)
        self.conv3_3 = nn.Conv2d(c256, c256, 3, padding=1)
        self.conv4_1 = nn.Conv2d(c256, c512, 3, padding=1)
        self.conv4_2 = nn.Conv2d(c512, c512, 3, padding=1)
        self.conv4_3 = nn.Conv2d(c512, c512, 3, padding=1)
        self.conv5_1 = nn.Conv2d(c512, c512, 3, padding=1)
        self.conv5_2 = nn.Conv2d(c512, c512, 3, padding=1)
        self.conv5_3 = nn.Conv2d(c512, c512, 3, padding=1)
        self.fc6 = nn.Conv2d(c512, c4096, 7)
        self.fc7 = nn.Conv2d(c4096, c4096, 1)
        self.score_fr = nn.Conv2d(c4096, n_class, 1)
        self.score_pool3 = nn.Conv2d(c256, n_class, 1)
        self.score_pool4 = nn.Conv2d(c512, n_class, 1)
        self.upscore2 = nn.ConvTranspose2d(n_class, n_class, 4, stride=2, bias=False)
        self.upscore8 = nn.ConvTranspose2d(n_class, n_class, 16, stride=8, bias=False)
        self.upscore_pool4 = nn.ConvTranspose2d(n_class, n_class, 4, stride=2, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # Random weights at a scale that keeps activations O(1).
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                nn.init.normal_(m.weight, 0.0, (2.0 / fan_in) ** 0.5)
                nn.init.normal_(m.bias, 0.0, 0.1)
            if isinstance(m, nn.ConvTranspose2d):
                m.weight.data.copy_(upsampling_weight(m.in_channels, m.kernel_size[0]))
        self.conv1_1.weight.data /= 64.0
        self.score_pool4.weight.data *= 100.0
        self.score_pool3.weight.data *= 10000.0

    def forward(self, x):
        h = x
        pool = lambda t: F.max_pool2d(t, 2, stride=2, ceil_mode=True)
        h = F.relu(self.conv1_1(h)); h = pool(F.relu(self.conv1_2(h)))
        h = F.relu(self.conv2_1(h)); h = pool(F.relu(self.conv2_2(h)))
        h = F.relu(self.conv3_1(h)); h = F.relu(self.conv3_2(h)); h = pool(F.relu(self.conv3_3(h)))
        pool3 = h
        h = F.relu(self.conv4_1(h)); h = F.relu(self.conv4_2(h)); h = pool(F.relu(self.conv4_3(h)))
        pool4 = h
        h = F.relu(self.conv5_1(h)); h = F.relu(self.conv5_2(h)); h = pool(F.relu(self.conv5_3(h)))
        h = F.dropout2d(F.relu(self.fc6(h)), 0.5, self.training)
        h = F.dropout2d(F.relu(self.fc7(h)), 0.5, self.training)
        h = self.score_fr(h)
        h = self.upscore2(h)
        upscore2 = h
        h = self.score_pool4(pool4 * 0.01)
        h = h[:, :, 5:5 + upscore2.size(2), 5:5 + upscore2.size(3)]
        h = upscore2 + h
        h = self.upscore_pool4(h)
        upscore_pool4 = h
        h = self.score_pool3(pool3 * 0.0001)
        h = h[:, :, 9:9 + upscore_pool4.size(2), 9:9 + upscore_pool4.size(3)]
        h = upscore_pool4 + h
        h = self.upscore8(h)
        return h[:, :, 31:31 + x.size(2), 31:31 + x.size(3)].contiguous()


def vgg16(width):
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    layers, cin = [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, ch(v, width), 3, padding=1), nn.ReLU(inplace=True)]
            cin = ch(v, width)
    m = nn.Module()
    m.features = nn.Sequential(*layers)
    c4096 = ch(4096, width)
    m.classifier = nn.Sequential(
        nn.Linear(cin * 49, c4096), nn.ReLU(True), nn.Dropout(),
        nn.Linear(c4096, c4096), nn.ReLU(True), nn.Dropout(), nn.Linear(c4096, 1000))
    return m


def main():
    from safetensors.torch import save_file, load_file
    cmd = sys.argv[1]
    torch.manual_seed(7)
    if cmd == "fcn8s":
        out, width = sys.argv[2], float(sys.argv[3])
        m = FCN8s(19, width).eval()
        torch.save(m.state_dict(), f"{out}/fcn8s.pth")
        x = torch.randn(1, 3, 37, 53) * 60.0
        with torch.no_grad():
            y = m(x)
        save_file({"x": x.contiguous(), "y": y.contiguous()}, f"{out}/io.safetensors")
    elif cmd == "vgg16":
        out, width = sys.argv[2], float(sys.argv[3])
        torch.save(vgg16(width).state_dict(), f"{out}/vgg16.pth")
    elif cmd == "check-vgg16":
        sd = torch.load(sys.argv[2], map_location="cpu")
        ck = load_file(sys.argv[3])
        idx = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
        names = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
                 "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"]
        for n, i in zip(names, idx):
            for p in ("weight", "bias"):
                assert torch.equal(ck[f"{n}.{p}"], sd[f"features.{i}.{p}"]), f"{n}.{p}"
        for n, i in (("fc6", 0), ("fc7", 3)):
            assert torch.equal(ck[f"{n}.weight"], sd[f"classifier.{i}.weight"].view_as(ck[f"{n}.weight"])), n
            assert torch.equal(ck[f"{n}.bias"], sd[f"classifier.{i}.bias"]), n
        print("vgg16 mapping ok")
    elif cmd == "onnx-check":
        import onnx
        model = onnx.load(sys.argv[2])
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
        print("onnx checker ok")
    elif cmd == "ort-ids":
        import onnxruntime as ort
        from PIL import Image
        sess = ort.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"])
        meta = sess.get_modelmeta().custom_metadata_map
        import json
        label_ids = np.array(json.loads(meta["lse.label_ids"]), dtype=np.uint8)
        img = np.asarray(Image.open(sys.argv[3]).convert("RGB"), dtype=np.float32)
        x = img.transpose(2, 0, 1)[None]
        ids = sess.run(["train_ids"], {"image": x})[0][0]
        Image.fromarray(label_ids[ids]).save(sys.argv[4])
    elif cmd == "no-metadata":
        import onnx
        from onnx import helper, TensorProto
        node = helper.make_node("Identity", ["image"], ["scores"])
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 3, 4, 4])])
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), sys.argv[2])
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
