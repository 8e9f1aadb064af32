"""Which image encoder learns the synthetic benchmark fastest from scratch on a 2-core CPU?

Supervised (all 15 labels, BCE) for a fixed wall-clock budget on the quickstart data, then the
CheXpert-5 macro AUROC on the test split. This is the measurement behind the `small` preset's
ConvNet (README, "Image encoder"); it is PyTorch so that the architectures compare on one engine.

    medvlp synth --out /tmp/qs-data --size 128 --test-frac 0.2   # or a quickstart's data/ folder
    ~/.venvs/medvlp-torch/bin/pip install pillow numpy
    ~/.venvs/medvlp-torch/bin/python bench/encoder_choice.py DATA_DIR ARCH [SECONDS] [LR]

ARCH: vit (patch 16, 4 x 256, the old small preset), convstem (ViT with a 4-conv stem), hmlp (ViT
with a hierarchical-MLP stem), cnn (the small preset: channel LayerNorm + GELU), cnn-bn (the same
with BatchNorm + ReLU), hybrid (cnn + 2 transformer blocks).
"""
import json, sys, time
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
from PIL import Image

root, arch = sys.argv[1].rstrip("/") + "/", sys.argv[2]
budget = float(sys.argv[3]) if len(sys.argv) > 3 else 150.0
lr = float(sys.argv[4]) if len(sys.argv) > 4 else 5e-4
torch.manual_seed(0)
np.random.seed(0)
rows = [json.loads(l) for l in open(root + "manifest.jsonl")]
rows += [json.loads(l) for l in open(root + "image_only.jsonl")]
LAB = sorted(rows[0]["labels"].keys())
C5 = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]


def load(rs):
    x = np.stack([np.asarray(Image.open(root + r["images"][0]["path"]), dtype=np.float32) / 255.0 for r in rs])
    y = np.array([[r["labels"][k] for k in LAB] for r in rs], dtype=np.float32)
    return torch.tensor(x)[:, None], torch.tensor(y)


xtr, ytr = load([r for r in rows if r["split"] == "train"])
xte, yte = load([r for r in rows if r["split"] == "test" and r.get("text")])
m, s = xtr.mean(), xtr.std()
xtr, xte = (xtr - m) / s, (xte - m) / s


def auroc(y, p):
    r = np.empty(len(p))
    r[np.argsort(p)] = np.arange(1, len(p) + 1)
    n1 = y.sum()
    return (r[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * (len(y) - n1))


class Block(nn.Module):
    def __init__(s, d, h):
        super().__init__()
        s.n1, s.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        s.a = nn.MultiheadAttention(d, h, batch_first=True)
        s.m = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(s, x):
        y = s.n1(x)
        x = x + s.a(y, y, y, need_weights=False)[0]
        return x + s.m(s.n2(x))


class ChannelLN(nn.Module):
    def __init__(s, c):
        super().__init__()
        s.n = nn.LayerNorm(c)

    def forward(s, x):
        return s.n(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def cnn_trunk(bn):
    norm = nn.BatchNorm2d if bn else ChannelLN
    act = nn.ReLU if bn else nn.GELU
    layer = lambda i, o, k, st: [nn.Conv2d(i, o, k, st, k // 2), norm(o), act()]
    ls = layer(1, 32, 5, 2)
    for i, o in [(32, 64), (64, 128), (128, 256)]:
        ls += layer(i, o, 3, 2) + layer(o, o, 3, 1)
    return nn.Sequential(*ls)


class Tokens(nn.Module):
    """Any stem to 8x8 tokens of 256, optional transformer blocks, mean pool, linear head."""

    def __init__(s, kind, blocks):
        super().__init__()
        s.kind, d = kind, 256
        if kind == "linear":
            s.stem = nn.Linear(256, d)
        elif kind == "hmlp":
            s.s1 = nn.Sequential(nn.Linear(16, d // 4), nn.LayerNorm(d // 4), nn.GELU())
            s.s2 = nn.Sequential(nn.Linear(d, d // 4), nn.LayerNorm(d // 4), nn.GELU())
            s.s3 = nn.Linear(d, d)
        elif kind == "convstem":
            ls = []
            for i, o in [(1, 32), (32, 64), (64, 128)]:
                ls += [nn.Conv2d(i, o, 3, 2, 1), nn.BatchNorm2d(o), nn.ReLU()]
            s.stem = nn.Sequential(*ls, nn.Conv2d(128, d, 3, 2, 1))
        else:
            s.stem = cnn_trunk(kind == "cnn-bn")
        s.pos = nn.Parameter(torch.randn(1, 64, d) * 0.02) if blocks else None
        s.blocks = nn.Sequential(*[Block(d, 4) for _ in range(blocks)])
        s.norm = nn.LayerNorm(d) if blocks else nn.Identity()
        s.head = nn.Linear(d, len(LAB))

    def forward(s, x):
        b = x.shape[0]
        if s.kind == "linear":
            t = s.stem(x.reshape(b, 8, 16, 8, 16).permute(0, 1, 3, 2, 4).reshape(b, 64, 256))
        elif s.kind == "hmlp":
            t = x.reshape(b, 8, 2, 2, 4, 8, 2, 2, 4).permute(0, 1, 5, 2, 6, 3, 7, 4, 8).reshape(b, 64, 4, 4, 16)
            t = s.s3(s.s2(s.s1(t).reshape(b, 64, 4, -1)).reshape(b, 64, -1))
        else:
            t = s.stem(x).flatten(2).transpose(1, 2)
        if s.pos is not None:
            t = s.blocks(t + s.pos)
        return s.head(s.norm(t).mean(1))


net = {
    "vit": lambda: Tokens("linear", 4),
    "convstem": lambda: Tokens("convstem", 4),
    "hmlp": lambda: Tokens("hmlp", 4),
    "cnn": lambda: Tokens("cnn", 0),
    "cnn-bn": lambda: Tokens("cnn-bn", 0),
    "hybrid": lambda: Tokens("cnn", 2),
}[arch]()
opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05)
t0, step = time.time(), 0
while time.time() - t0 < budget:
    idx = torch.randint(0, len(xtr), (32,))
    net.train()
    loss = F.binary_cross_entropy_with_logits(net(xtr[idx]), ytr[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()
    step += 1
net.eval()
with torch.no_grad():
    p = torch.cat([net(xte[i : i + 128]) for i in range(0, len(xte), 128)]).numpy()
a = [auroc(yte[:, LAB.index(c)].numpy(), p[:, LAB.index(c)]) for c in C5]
print(json.dumps({"arch": arch, "lr": lr, "seconds": budget, "steps": step, "chexpert5_auroc": round(float(np.mean(a)), 4), "per_class": dict(zip(C5, [round(float(v), 3) for v in a]))}))
