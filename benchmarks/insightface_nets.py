"""The networks of insightface's buffalo_l pack at their real sizes, random weights, as ONNX.

Written here from the published layer configurations (no insightface training code is used):

- `det_10g.onnx`: SCRFD-10GF with keypoints (insightface `detection/scrfd/configs/scrfd/
  scrfd_10g_bnkps.py`, the model buffalo_l ships as det_10g and antelopev2 as
  scrfd_10g_bnkps): ResNetV1e backbone (deep stem 28-28-56, 2x2 max pool, BasicBlock stages
  3/4/2/3 with 56/88/88/224 channels, average-pool shortcuts), PAFPN neck (56 channels, levels
  at strides 8/16/32), and per stride a head of 3 conv-BN-ReLU (80 channels) shared by
  classification, box and keypoint 3x3 convolutions; 2 anchors per position. Exported as that
  file is: input `input.1` [1, 3, H, W] (H, W dynamic), 9 rank-2 outputs score/bbox/kps x
  strides 8/16/32, scores after the sigmoid.
- `2d106det.onnx`: 106-point coordinate regression. The model zoo lists its backbone as
  MobileNet-0.5 (1.2 M parameters) and publishes no layer table, so this is MobileNet-V1 with
  width 0.5 at 192x192, global pooling and a 212-wide linear layer: the same kind of network
  and input, about a fifth fewer parameters (the real head is not published).
- `w600k_r50.onnx`: ArcFace IResNet-50 (insightface `recognition/arcface_torch/backbones/
  iresnet.py`: 3x3 stem at 112 px, pre-BN IBasicBlocks 3/4/14/3 with PReLU, 64-512 channels,
  BN + flatten + linear 25088->512 + BN1d). Input [N, 3, 112, 112], output [N, 512].

Each export is checked against insightface's own model router when insightface is installed.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

# Published figures, for the report next to what is built here. SCRFD "FLOPs" are mmcv
# multiply-accumulates at VGA (640x480) input.
PUBLISHED = {
    "det_10g.onnx": "SCRFD_10G_KPS: 4.23 M params, 10 GFLOPs (MACs) at 640x480 "
    "(insightface detection/scrfd/README.md)",
    "2d106det.onnx": "2d106det: coordinate regression, MobileNet-0.5, 1.2 M params "
    "(insightface model_zoo/README.md)",
    "w600k_r50.onnx": "ArcFace R50: 166.3 MB ONNX = 43.6 M float32 params "
    "(insightface challenges/iccv21-mfr/README.md); ~6.3 G MACs at 112x112 as usually quoted",
}


# -- SCRFD-10GF --------------------------------------------------------------------------------


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block; the shortcut of a strided block average-pools, then 1x1 (V1d/V1e)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, 3, stride), conv_bn(cout, cout, 3, act=False))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            pool: list[nn.Module] = []
            if stride != 1:
                pool = [nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)]
            self.shortcut = nn.Sequential(*pool, conv_bn(cin, cout, 1, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class ResNetV1e(nn.Module):
    def __init__(
        self,
        blocks: tuple[int, ...] = (3, 4, 2, 3),
        planes: tuple[int, ...] = (56, 88, 88, 224),
        stem: int = 56,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            conv_bn(3, stem // 2, 3, 2),
            conv_bn(stem // 2, stem // 2),
            conv_bn(stem // 2, stem),
            nn.MaxPool2d(2, 2),
        )
        stages, cin = [], stem
        for i, (n, cout) in enumerate(zip(blocks, planes, strict=True)):
            stride = 1 if i == 0 else 2
            first = BasicBlock(cin, cout, stride)
            stages.append(nn.Sequential(first, *[BasicBlock(cout, cout, 1) for _ in range(n - 1)]))
            cin = cout
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs  # strides 4, 8, 16, 32


class PAFPN(nn.Module):
    """FPN top-down pass then a bottom-up path (mmdet PAFPN), no norm or activation."""

    def __init__(self, in_channels: tuple[int, ...] = (88, 88, 224), out: int = 56) -> None:
        super().__init__()
        n = len(in_channels)
        self.lateral = nn.ModuleList(nn.Conv2d(c, out, 1) for c in in_channels)
        self.fpn = nn.ModuleList(nn.Conv2d(out, out, 3, padding=1) for _ in range(n))
        self.down = nn.ModuleList(nn.Conv2d(out, out, 3, stride=2, padding=1) for _ in range(n - 1))
        self.pafpn = nn.ModuleList(nn.Conv2d(out, out, 3, padding=1) for _ in range(n - 1))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        lat = [conv(f) for conv, f in zip(self.lateral, feats, strict=True)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[2:])
        inter = [conv(x) for conv, x in zip(self.fpn, lat, strict=True)]
        for i in range(len(inter) - 1):
            inter[i + 1] = inter[i + 1] + self.down[i](inter[i])
        return [inter[0]] + [conv(x) for conv, x in zip(self.pafpn, inter[1:], strict=True)]


class ScrfdStrideHead(nn.Module):
    """One stride's head: 3 conv-BN-ReLU shared by cls/box/kps, then three 3x3 predictors."""

    def __init__(self, cin: int = 56, feat: int = 80, stacked: int = 3, anchors: int = 2) -> None:
        super().__init__()
        self.tower = nn.Sequential(
            *[conv_bn(cin if i == 0 else feat, feat) for i in range(stacked)]
        )
        self.cls = nn.Conv2d(feat, anchors, 3, padding=1)
        self.reg = nn.Conv2d(feat, 4 * anchors, 3, padding=1)
        self.kps = nn.Conv2d(feat, 10 * anchors, 3, padding=1)
        self.scale = nn.Parameter(torch.ones(()))  # mmcv Scale on the box distances

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = self.tower(x)

        def flat(t: torch.Tensor, k: int) -> torch.Tensor:
            return t.permute(0, 2, 3, 1).reshape(-1, k)  # rank 2, as det_10g.onnx

        return (
            flat(torch.sigmoid(self.cls(f)), 1),
            flat(self.reg(f) * self.scale, 4),
            flat(self.kps(f), 10),
        )


class SCRFD10GKps(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = ResNetV1e()
        self.neck = PAFPN()
        self.heads = nn.ModuleList(ScrfdStrideHead() for _ in (8, 16, 32))
        self._init_like_scrfd()

    def _init_like_scrfd(self) -> None:
        """SCRFD's own initialisation: Kaiming backbone, head convs N(0, 0.01), the score bias
        at -4.595 (a 1% prior), so untrained it scores every anchor ~0.01."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for head in self.heads:
            for m in [*head.tower.modules(), head.cls, head.reg, head.kps]:
                if isinstance(m, nn.Conv2d):
                    nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.constant_(head.cls.bias, -4.595)
            nn.init.zeros_(head.reg.bias)
            nn.init.zeros_(head.kps.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = self.neck(self.backbone(x)[1:])
        outs = [head(f) for head, f in zip(self.heads, feats, strict=True)]
        return tuple(o[0] for o in outs) + tuple(o[1] for o in outs) + tuple(o[2] for o in outs)


# -- 2d106det stand-in architecture: MobileNet-V1 x0.5 regression -----------------------------


def dw_separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class MobileNetLandmark106(nn.Module):
    # MobileNet-V1 (channels, stride) after the stem, at width 1.0
    CFG = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
           (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))  # fmt: skip

    def __init__(self, width: float = 0.5, points: int = 106) -> None:
        super().__init__()
        c = int(32 * width)
        layers: list[nn.Module] = [conv_bn(3, c, 3, 2)]
        for cout, stride in self.CFG:
            layers.append(dw_separable(c, int(cout * width), stride))
            c = int(cout * width)
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, 2 * points)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


# -- ArcFace IResNet-50 ------------------------------------------------------------------------


class IBasicBlock(nn.Module):
    """BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, plus the shortcut (no final act)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class IResNet(nn.Module):
    def __init__(self, blocks: tuple[int, ...] = (3, 4, 14, 3), dim: int = 512) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(64), nn.PReLU(64))  # fmt: skip
        layers, cin = [], 64
        for n, cout in zip(blocks, (64, 128, 256, 512), strict=True):
            layers += [IBasicBlock(cin if j == 0 else cout, cout, 2 if j == 0 else 1)
                       for j in range(n)]  # fmt: skip
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.bn2 = nn.BatchNorm2d(512)
        self.fc = nn.Linear(512 * 7 * 7, dim)
        self.features = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn2(self.layers(self.stem(x)))
        return self.features(self.fc(torch.flatten(x, 1)))


# -- build, count, export ----------------------------------------------------------------------


@dataclass
class BuiltNetwork:
    file: str
    architecture: str
    params_m: float
    gmacs: dict[str, float]  # input size -> conv + linear multiply-accumulates, G
    published: str
    insightface_router: str | None = None  # the class insightface.model_zoo.get_model returns


def gmacs(module: nn.Module, shape: tuple[int, ...]) -> float:
    """Conv + matmul multiply-accumulates for one input (torch's counter gives 2 per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(torch.zeros(shape))
    return round(counter.get_total_flops() / 2e9, 3)


def _export(module: nn.Module, shape: tuple[int, ...], path: Path, *, input_name: str,
            outputs: list[str], dynamic: dict) -> None:  # fmt: skip
    tmp = path.with_name(f".{path.name}.tmp")
    torch.onnx.export(
        module, (torch.zeros(shape),), str(tmp), input_names=[input_name], output_names=outputs,
        dynamic_axes=dynamic, dynamo=False, opset_version=13, do_constant_folding=True,
    )  # fmt: skip
    os.replace(tmp, path)


def _routed_by_insightface(path: Path) -> str | None:
    try:
        from insightface.model_zoo import get_model
    except ImportError:
        return None
    model = get_model(str(path), providers=["CPUExecutionProvider"])
    return None if model is None else f"{type(model).__name__} ({model.taskname})"


def _networks() -> dict[str, tuple]:
    """file -> (factory, export input shape, count shapes, input name, outputs, dynamic axes)."""
    names = [f"{k}_{s}" for k in ("score", "bbox", "kps") for s in (8, 16, 32)]
    return {
        "det_10g.onnx": (
            SCRFD10GKps, (1, 3, 640, 640), [(1, 3, 480, 640), (1, 3, 640, 640)], "input.1",
            names, {"input.1": {2: "?", 3: "?"}},
        ),
        "2d106det.onnx": (
            MobileNetLandmark106, (1, 3, 192, 192), [(1, 3, 192, 192)], "data", ["fc1"],
            {"data": {0: "None"}, "fc1": {0: "None"}},
        ),
        "w600k_r50.onnx": (
            IResNet, (1, 3, 112, 112), [(1, 3, 112, 112)], "input.1", ["fc1"],
            {"input.1": {0: "None"}, "fc1": {0: "None"}},
        ),
    }  # fmt: skip


def cache_key() -> str:
    """Changes with this file's code and the torch version (the exports depend on both)."""
    src = inspect.getsource(sys.modules[__name__])
    return hashlib.sha256(f"{src}\n{torch.__version__}".encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(tempfile.gettempdir(), "fgid-cache")
    return Path(base) / "fgid" / "bench-insightface"


def buffalo_l_pack(
    cache_dir: Path | None = None, *, seed: int = 0
) -> tuple[Path, list[BuiltNetwork]]:
    """`<cache>/<key>/insightface/models/buffalo_l/` with the three exports, and their figures.

    Built once per cache key and seed; a later call reads the files and the recorded figures.
    Returns the models dir to pass as `--models-dir` and one record per network.
    """
    root = (cache_dir or default_cache_dir()) / f"{cache_key()}-seed{seed}"
    pack = root / "insightface" / "models" / "buffalo_l"
    record = root / "networks.json"
    if record.is_file() and all((pack / f).is_file() for f in _networks()):
        return root, [BuiltNetwork(**r) for r in json.loads(record.read_text())]
    pack.mkdir(parents=True, exist_ok=True)
    built = []
    for i, (file, (factory, shape, count_shapes, inp, outs, dyn)) in enumerate(_networks().items()):
        torch.manual_seed(seed + i)
        net = factory().eval()
        params = sum(p.numel() for p in net.parameters())
        macs = {"x".join(map(str, s[2:])): gmacs(net, s) for s in count_shapes}
        _export(net, shape, pack / file, input_name=inp, outputs=outs, dynamic=dyn)
        built.append(BuiltNetwork(file=file, architecture=type(net).__name__,
                                  params_m=round(params / 1e6, 3), gmacs=macs,
                                  published=PUBLISHED[file],
                                  insightface_router=_routed_by_insightface(pack / file)))  # fmt: skip
    tmp = record.with_name(".networks.json.tmp")
    tmp.write_text(json.dumps([asdict(b) for b in built], indent=1))
    os.replace(tmp, record)
    return root, built
