#!/usr/bin/env python3
"""Checks that `medvlp export` output loads in open_clip and transformers and embeds like medvlp.

    python scripts/check_export.py --medvlp target/release/medvlp [--work DIR]

For three pooling configurations of the tiny ViT+BERT preset

    (a) vision mean + text mean    -> open_clip (transformers must refuse)
    (b) vision cls  + text cls     -> open_clip (transformers must refuse)
    (c) vision cls  + text pooler  -> open_clip and transformers

it runs `medvlp init`, perturbs every tensor of the random initialisation with N(0, 0.2) noise
(initial biases of 0 and LayerNorm weights of 1 would hide mapping mistakes), exports the model
and compares the exported model's embeddings, computed in Python, with `medvlp embed` on the same
report sentences and PNG images. A row passes when every item's cosine to medvlp's embedding is
at least 0.99999.

Images: the Python side is fed the exact tensor medvlp's eval preprocessing produces, so that
the encoders are compared independently of resize/crop implementations. The PNGs are written at
`preprocess.resize_shorter` pixels square, which medvlp's resize leaves untouched, so its
preprocessing is a center crop to `image_size`, x / 255, then (x - mean) / std; `medvlp preview`
is used to confirm that the crop is exactly what the model sees. The open_clip tower reads the
gray value replicated over RGB. Rows marked `info` run each library's own image preprocessing
on the PNG files instead; they are reported but do not decide the exit status.

Load failures are reported (with what the exporter would have to change), never patched here.
Exit status: 0 when every checked row passes, 1 otherwise.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np

COS_MIN = 0.99999
REPO = Path(__file__).resolve().parent.parent
TOKENIZER = REPO / "crates/medvlp-model/tests/data/interop/hf_dual_encoder/tokenizer.json"

TEXTS = [
    "No acute cardiopulmonary process.",
    "The heart size is normal. The lungs are clear.",
    "Heart size XXXX normal, mediastinal contours are within normal limits.",
    "There is a 3 cm nodule in the right upper lobe, ___ follow-up recommended.",
    "Mild cardiomegaly; small bilateral pleural effusions (left > right).",
    "Compared to ___, there has been interval placement of a right-sided PICC line.",
    "Endotracheal tube terminates 4.5 cm above the carina.",
    "No pneumothorax, no focal consolidation, no pleural effusion!",
    "Stable 1.2 x 0.8 cm calcified granuloma at the left lung base.",
    "Low lung volumes with bibasilar atelectasis vs. early pneumonia?",
    "Degenerative changes of the thoracic spine at T7-T9.",
    "XXXX XXXX of the right 5th and 6th ribs, healed.",
    "Findings: pulmonary vascular congestion, consistent with CHF.",
    "Impression: 1. Right lower lobe opacity. 2. No effusion.",
    "Sternotomy wires are intact; prosthetic mitral valve noted.",
    "The patient is status post left mastectomy ___ ___.",
    "Opacity at the left base (10% larger than on 01/02/2019) -- likely scarring.",
    "nasogastric tube coursing below the diaphragm, tip not visualized",
    "Hyperinflated lungs; flattened hemidiaphragms, e.g. COPD/emphysema.",
    # Long enough to be truncated at the model's 64 tokens (tests truncation and the final [SEP]).
    "Portable AP upright chest radiograph demonstrates a right internal jugular central venous "
    "catheter with tip in the mid SVC, unchanged position of the endotracheal tube, stable "
    "moderate cardiomegaly, persistent bilateral perihilar opacities and small effusions, "
    "XXXX atelectasis, no pneumothorax; recommend clinical correlation and follow-up in 2-3 weeks.",
]

CONFIGS = [
    # name, vision pooling, text pooling, targets expected to load, targets expected to refuse
    ("a", "mean", "mean", ["open_clip"], ["hf"]),
    ("b", "cls", "cls", ["open_clip"], ["hf"]),
    ("c", "cls", "pooler", ["open_clip", "hf"], []),
]


class Results:
    def __init__(self):
        self.rows = []  # dicts: cfg, target, check, n, min_cos, max_abs, status, note

    def add(self, cfg, target, check, status, n=None, min_cos=None, max_abs=None, note=""):
        row = dict(cfg=cfg, target=target, check=check, n=n, min_cos=min_cos, max_abs=max_abs,
                   status=status, note=note)
        self.rows.append(row)
        cos = "" if min_cos is None else f" min_cos={min_cos:.7f}"
        diff = "" if max_abs is None else f" max_abs={max_abs:.2e}"
        print(f"  [{status}] {cfg}/{target}/{check}{cos}{diff} {note}".rstrip(), flush=True)

    def failed(self):
        return [r for r in self.rows if r["status"] == "FAIL"]

    def table(self):
        head = ("cfg", "target", "check", "n", "min_cos", "max_abs", "status", "note")
        lines = []
        for r in self.rows:
            lines.append((
                r["cfg"], r["target"], r["check"],
                "" if r["n"] is None else str(r["n"]),
                "" if r["min_cos"] is None else f"{r['min_cos']:.8f}",
                "" if r["max_abs"] is None else f"{r['max_abs']:.2e}",
                r["status"],
                r["note"],
            ))
        widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h)
                  for i, h in enumerate(head)]
        widths[-1] = len(head[-1])  # the note column is left ragged
        fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
        out = [fmt(head), fmt(["-" * w for w in widths])]
        out += [fmt(l) for l in lines]
        return "\n".join(out)


def medvlp(exe, *args, check=True):
    env = dict(os.environ)
    env.pop("RUST_BACKTRACE", None)
    p = subprocess.run([exe, *map(str, args)], env=env, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(
            f"medvlp {' '.join(map(str, args))} exited {p.returncode}:\n{p.stdout}{p.stderr}")
    return p


def read_jsonl(path):
    ids, rows = [], []
    with open(path) as f:
        for line in f:
            if line.strip():
                o = json.loads(line)
                ids.append(o["id"])
                rows.append(o["embedding"])
    return ids, np.asarray(rows, dtype=np.float64)


def compare(ref, got):
    """Per-row cosine and the largest absolute difference of L2-normalised rows."""
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    if ref.shape != got.shape:
        raise ValueError(f"shape {got.shape} differs from medvlp's {ref.shape}")
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    got = got / np.linalg.norm(got, axis=1, keepdims=True)
    cos = (ref * got).sum(1)
    return cos, float(np.abs(ref - got).max())


def add_comparison(res, cfg, target, check, ref, got, info=False):
    try:
        cos, diff = compare(ref, got)
    except Exception as e:  # noqa: BLE001
        res.add(cfg, target, check, "info" if info else "FAIL", note=str(e))
        return
    ok = bool((cos >= COS_MIN).all())
    note = "" if ok else f"rows below {COS_MIN}: {int((cos < COS_MIN).sum())}/{len(cos)}"
    status = "info" if info else ("ok" if ok else "FAIL")
    res.add(cfg, target, check, status, n=len(cos), min_cos=float(cos.min()), max_abs=diff,
            note=note)


def perturb(model_dir, seed):
    """Adds N(0, 0.2) noise to every tensor of model.safetensors, keeping the file's metadata."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = Path(model_dir) / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    g = torch.Generator().manual_seed(seed)
    for name in sorted(tensors):
        t = tensors[name]
        noise = torch.randn(t.shape, generator=g, dtype=torch.float32) * 0.2
        tensors[name] = (t.float() + noise).to(t.dtype).contiguous()
    save_file(tensors, str(path), metadata=meta)
    with safe_open(str(path), "pt") as f:
        if f.metadata() != meta:
            raise RuntimeError(f"{path}: metadata changed when saving ({meta} -> {f.metadata()})")
    return len(tensors)


def make_images(folder, size, seed):
    """A few grayscale PNGs: noise, rectangles, a disc, a gradient."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(6):
        a = rng.normal(110 + 15 * i, 35, (size, size))
        if i % 2 == 0:
            y0, x0 = rng.integers(0, size // 2, 2)
            h, w = rng.integers(size // 6, size // 2, 2)
            a[y0:y0 + h, x0:x0 + w] = rng.integers(180, 256)
        if i % 3 != 2:
            cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
            r = rng.integers(size // 8, size // 3)
            a[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.integers(0, 60)
        if i >= 3:
            a = a + np.linspace(-60, 60, size)[None, :] * (1 if i % 2 else -1)
        img = np.clip(np.round(a), 0, 255).astype(np.uint8)
        name = f"img{i}.png"
        Image.fromarray(img, mode="L").save(folder / name)
        names.append(name)
    (folder / "list.txt").write_text("".join(n + "\n" for n in names))
    return names


def center_crop(a, size):
    h, w = a.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return a[top:top + size, left:left + size]


def expected_views(img_dir, names, pp):
    """What medvlp's eval preprocessing gives the PNGs (written at resize_shorter, so that the
    resize is the identity): the center crop at image_size, as uint8 (N, H, W)."""
    from PIL import Image

    return np.stack([center_crop(np.asarray(Image.open(img_dir / n)), pp["image_size"])
                     for n in names])


def check_preview(exe, res, cfg, model, img_dir, names, views, work):
    """`medvlp preview` writes what the model sees before mean/std: it must equal our crop."""
    from PIL import Image

    worst, said = 0, ""
    for n, v in zip(names, views):
        out = work / f"preview_{n}"
        p = medvlp(exe, "preview", img_dir / n, "--model", model, "--out", out)
        said = " ".join((p.stdout + p.stderr).split())
        m = re.search(r"wrote \S+ \((.*)\)", said)  # "wrote P.png (32x32, resize shorter side to ...)"
        said = m.group(1) if m else said
        seen = np.asarray(Image.open(out))
        if seen.ndim == 3:
            seen = seen[..., 0]
        if seen.shape != v.shape:
            res.add(cfg, "medvlp", "preview", "FAIL",
                    note=f"{n}: preview is {seen.shape}, expected {v.shape}; {said}")
            return False
        worst = max(worst, int(np.abs(seen.astype(int) - v.astype(int)).max()))
    ok = worst == 0
    res.add(cfg, "medvlp", "preview", "ok" if ok else "FAIL", n=len(names),
            note=f"preview == our center crop, max pixel diff {worst} (medvlp: {said})")
    return ok


def normalise(views, mean, std, channels):
    """uint8 (N, H, W) -> float32 (N, C, H, W): x / 255, gray replicated, (x - mean) / std."""
    x = views.astype(np.float32) / 255.0
    x = np.repeat(x[:, None], channels, axis=1)
    mean = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return ((x - mean) / std).astype(np.float32)


def describe_exc(e):
    msg = f"{type(e).__name__}: {e}"
    return " ".join(msg.split())


def features(out):
    """transformers 5 get_*_features return a model output whose pooler_output is projected."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    if getattr(out, "pooler_output", None) is not None:
        return out.pooler_output
    if isinstance(out, (tuple, list)):
        return out[1] if len(out) > 1 else out[0]
    raise TypeError(f"cannot find the features in {type(out).__name__}")


def l2n(t):
    import torch

    return torch.nn.functional.normalize(t.double(), dim=-1).numpy()


def check_open_clip(res, cfg, out_dir, pp, ref_txt, ref_img, views, img_dir, names):
    import open_clip
    import torch
    from PIL import Image

    spec = f"local-dir:{out_dir}"
    diagnostic = False
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(spec)
        model.eval()
        res.add(cfg, "open_clip", "load", "ok", note="create_model_and_transforms strict load")
    except Exception as e:  # noqa: BLE001
        res.add(cfg, "open_clip", "load", "FAIL", note=describe_exc(e))
        traceback.print_exc()
        # Diagnostic only (never a pass): the same model loaded non-strictly, to show whether
        # the rejected keys are the only problem. Its rows are `info`.
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec, load_weights=False, pretrained_text=False)
            keys = open_clip.load_checkpoint(model, str(out_dir / "open_clip_model.safetensors"),
                                             strict=False)
            model.eval()
            res.add(cfg, "open_clip", "load (non-strict, diagnostic)", "info",
                    note=f"missing {list(keys.missing_keys)} unexpected {list(keys.unexpected_keys)}")
            diagnostic = True
        except Exception as e2:  # noqa: BLE001
            res.add(cfg, "open_clip", "load (non-strict, diagnostic)", "info",
                    note=describe_exc(e2))
            return
    tag = " (diagnostic)" if diagnostic else ""

    with open(out_dir / "open_clip_config.json") as f:
        oc_pp = json.load(f).get("preprocess_cfg", {})
    mean, std = oc_pp.get("mean"), oc_pp.get("std")
    want_mean = pp["mean"] * 3 if len(pp["mean"]) == 1 else pp["mean"]
    want_std = pp["std"] * 3 if len(pp["std"]) == 1 else pp["std"]
    ok = (mean is not None and std is not None and np.allclose(mean, want_mean)
          and np.allclose(std, want_std))
    res.add(cfg, "open_clip", "preprocess_cfg", "ok" if ok else "FAIL",
            note=f"mean {mean} std {std} (medvlp {pp['mean']} {pp['std']})")

    try:
        tok = open_clip.get_tokenizer(spec)
        ids = tok(TEXTS)
        with torch.no_grad():
            t = model.encode_text(ids, normalize=True)
        add_comparison(res, cfg, "open_clip", "texts" + tag, ref_txt, l2n(t), info=diagnostic)
    except Exception as e:  # noqa: BLE001
        res.add(cfg, "open_clip", "texts" + tag, "info" if diagnostic else "FAIL",
                note=describe_exc(e))
        traceback.print_exc()

    try:
        x = torch.from_numpy(normalise(views, want_mean, want_std, 3))
        with torch.no_grad():
            v = model.encode_image(x, normalize=True)
        add_comparison(res, cfg, "open_clip", "images" + tag, ref_img, l2n(v), info=diagnostic)
    except Exception as e:  # noqa: BLE001
        res.add(cfg, "open_clip", "images" + tag, "info" if diagnostic else "FAIL",
                note=describe_exc(e))
        traceback.print_exc()

    # Informational: open_clip's own transform on the PNG files.
    try:
        x = torch.stack([preprocess(Image.open(img_dir / n)) for n in names])
        with torch.no_grad():
            v = model.encode_image(x, normalize=True)
        add_comparison(res, cfg, "open_clip", "images (own preprocess)", ref_img, l2n(v),
                       info=True)
    except Exception as e:  # noqa: BLE001
        res.add(cfg, "open_clip", "images (own preprocess)", "info", note=describe_exc(e))


def check_hf(res, cfg, out_dir, pp, ref_txt, ref_img, views, img_dir, names):
    import torch
    from PIL import Image
    from transformers import AutoTokenizer, VisionTextDualEncoderModel

    try:
        model, info = VisionTextDualEncoderModel.from_pretrained(str(out_dir),
                                                                 output_loading_info=True)
        model.eval()
    except Exception as e:  # noqa: BLE001
        res.add(cfg, "hf", "load", "FAIL", note=describe_exc(e))
        traceback.print_exc()
        return
    bad = {k: v for k, v in info.items() if v}
    res.add(cfg, "hf", "load", "FAIL" if bad else "ok",
            note=f"loading info: {bad}" if bad else "no missing/unexpected/mismatched keys")

    with open(out_dir / "config.json") as f:
        vcfg = json.load(f)["vision_config"]
    with open(out_dir / "preprocessor_config.json") as f:
        ppc = json.load(f)
    mean, std = ppc.get("image_mean"), ppc.get("image_std")
    ok = (mean is not None and std is not None and np.allclose(mean, pp["mean"])
          and np.allclose(std, pp["std"]))
    res.add(cfg, "hf", "preprocessor_config", "ok" if ok else "FAIL",
            note=f"image_mean {mean} image_std {std} num_channels {vcfg.get('num_channels')}")

    try:
        tok = AutoTokenizer.from_pretrained(str(out_dir))
        enc = tok(TEXTS, padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            t = features(model.get_text_features(**enc))
        add_comparison(res, cfg, "hf", "texts", ref_txt, l2n(t))
    except Exception as e:  # noqa: BLE001
        res.add(cfg, "hf", "texts", "FAIL", note=describe_exc(e))
        traceback.print_exc()

    try:
        x = torch.from_numpy(normalise(views, pp["mean"], pp["std"], vcfg.get("num_channels", 1)))
        with torch.no_grad():
            v = features(model.get_image_features(pixel_values=x))
        add_comparison(res, cfg, "hf", "images", ref_img, l2n(v))
    except Exception as e:  # noqa: BLE001
        res.add(cfg, "hf", "images", "FAIL", note=describe_exc(e))
        traceback.print_exc()

    # Informational: the exported image processor on the PNG files.
    try:
        from transformers import AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(str(out_dir))
        imgs = [np.asarray(Image.open(img_dir / n))[None] for n in names]  # (1, H, W) each
        x = proc(images=imgs, return_tensors="pt", input_data_format="channels_first")
        with torch.no_grad():
            v = features(model.get_image_features(pixel_values=x["pixel_values"]))
        add_comparison(res, cfg, "hf", "images (own preprocess)", ref_img, l2n(v), info=True)
    except Exception as e:  # noqa: BLE001
        res.add(cfg, "hf", "images (own preprocess)", "info", note=describe_exc(e))


def run_config(exe, res, work, name, vpool, tpool, loads, refuses, seed):
    print(f"== ({name}) vision {vpool} + text {tpool}", flush=True)
    cfg = f"{name}:{vpool}+{tpool}"
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    model = d / "model"
    medvlp(exe, "init", "--preset", "tiny", "--out", model, "--tokenizer", TOKENIZER,
           "--seed", seed, "--vision-pooling", vpool, "--text-pooling", tpool)
    n = perturb(model, seed)
    print(f"  perturbed {n} tensors of {model / 'model.safetensors'}", flush=True)
    mcfg = json.loads((model / "config.json").read_text())
    pp = mcfg["preprocess"]
    if pp.get("hist_eq"):
        raise RuntimeError("hist_eq preprocessing is not reproduced by this script")
    if mcfg["vision_config"]["pooling"] != vpool or mcfg["text_config"]["pooling"] != tpool:
        raise RuntimeError(f"init wrote pooling {mcfg['vision_config']['pooling']}/"
                           f"{mcfg['text_config']['pooling']}, asked for {vpool}/{tpool}")

    # Inputs and medvlp's own embeddings.
    size = max(pp["image_size"], pp.get("resize_shorter") or pp["image_size"])
    img_dir = d / "images"
    names = make_images(img_dir, size, seed)
    views = expected_views(img_dir, names, pp)
    check_preview(exe, res, cfg, model, img_dir, names, views, d)
    (d / "texts.txt").write_text("".join(t + "\n" for t in TEXTS))
    medvlp(exe, "embed", "--model", model, "--texts", d / "texts.txt", "--output", d / "t.jsonl")
    medvlp(exe, "embed", "--model", model, "--images", img_dir / "list.txt",
           "--output", d / "i.jsonl")
    tid, ref_txt = read_jsonl(d / "t.jsonl")
    iid, ref_img = read_jsonl(d / "i.jsonl")
    if len(tid) != len(TEXTS) or [str(i) for i in iid] != names:
        raise RuntimeError(f"medvlp embed returned ids {tid} / {iid}")

    for target in (*loads, *refuses):
        out = d / f"export_{target}"
        p = medvlp(exe, "export", "--model", model, "--format", target, "--out", out, check=False)
        said = " ".join((p.stdout + p.stderr).split())
        if target in refuses:
            ok = p.returncode != 0 and "cannot be exported" in said
            res.add(cfg, target, "refuses export", "ok" if ok else "FAIL",
                    note=f"exit {p.returncode}: {said[:300]}")
            continue
        if p.returncode != 0:
            res.add(cfg, target, "export", "FAIL", note=f"exit {p.returncode}: {said[:300]}")
            continue
        if target == "open_clip":
            check_open_clip(res, cfg, out, pp, ref_txt, ref_img, views, img_dir, names)
        else:
            check_hf(res, cfg, out, pp, ref_txt, ref_img, views, img_dir, names)


def versions():
    import importlib.metadata as md

    out = [f"python {sys.version.split()[0]}"]
    for pkg in ("torch", "transformers", "open_clip_torch", "timm", "tokenizers", "safetensors",
                "numpy", "Pillow"):
        try:
            out.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            out.append(f"{pkg} (not installed)")
    return ", ".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--medvlp", default=str(REPO / "target/release/medvlp"),
                    help="the medvlp binary")
    ap.add_argument("--work", help="working folder (default: a fresh temporary folder)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    exe = str(Path(args.medvlp).resolve())
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="medvlp_check_export_"))
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if any(work.iterdir()):
        sys.exit(f"{work} is not empty (the exporter writes into new or empty folders)")
    print(f"medvlp: {exe}\nwork: {work}", flush=True)
    p = medvlp(exe, "--version", check=False)
    medvlp_version = (p.stdout or p.stderr).strip()

    res = Results()
    for i, (name, vpool, tpool, loads, refuses) in enumerate(CONFIGS):
        try:
            run_config(exe, res, work, name, vpool, tpool, loads, refuses, args.seed + i)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            res.add(f"{name}:{vpool}+{tpool}", "-", "setup", "FAIL", note=describe_exc(e))

    print()
    print(res.table())
    print()
    print(f"versions: {medvlp_version}; {versions()}")
    failed = res.failed()
    print(f"pass threshold: cosine >= {COS_MIN} for every row; "
          f"{len([r for r in res.rows if r['status'] == 'ok'])} ok, {len(failed)} FAIL, "
          f"{len([r for r in res.rows if r['status'] == 'info'])} info (not counted)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
