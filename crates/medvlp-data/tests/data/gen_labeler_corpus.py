#!/usr/bin/env python3
"""Writes labeler_corpus.jsonl: the annotated sentences and whole reports that
crates/medvlp-data/tests/labeler_corpus.rs scores the labeler on.

    python3 crates/medvlp-data/tests/data/gen_labeler_corpus.py   # rewrites labeler_corpus.jsonl

The committed JSONL is what the test reads; this script is how it was written. Every phrase
below was written by hand, the way chest X-ray reports are worded (IU/OpenI with `XXXX`
placeholders, MIMIC-CXR with `___`), and annotated by hand for the 13 findings the issue scores,
under both labelling conventions (docs/labeler-conventions.md). Phrases carry slots (side, lobe,
size, rib, placeholder) and alternatives `{a|b}`; sentences are phrases with their slots filled,
reports are phrases composed into sections around one consistent scenario (a finding is stated
once in the findings and may be restated in the impression; fillers never contradict it).

Annotation (a curator's reading, not the labeler's):
  +  present (1)      0  absent (0)      ?  uncertain (-1)      _  not mentioned
  "CODE v" is the label under both conventions, "CODE c/s" when the CheXpert (c) and strict (s)
  conventions differ. Labels not listed are not mentioned.
  - hedges ("likely", "possible", "concerning for", "cannot be excluded") are uncertain;
    "consistent with", "compatible with", "representing" assert;
  - CheXpert convention: vascular congestion / engorgement, heart failure, fluid overload and
    Kerley lines are Edema, infection is Pneumonia, borderline heart size is uncertain;
    strict convention: only a named finding is labelled, and borderline heart size is present;
  - history ("history of pneumonia", "scarring from old infection") is not active disease, and
    the INDICATION / HISTORY / COMPARISON sections describe the request, not the image:
    not mentioned;
  - hyperinflation, COPD, bullae, flattened diaphragms are not emphysema; subcutaneous emphysema
    is not emphysema; soft-tissue edema is not pulmonary edema;
  - a nodular density explained by a nipple shadow, a healing fracture or bone is no nodule
    (uncertain when the explanation is hedged, absent when definite); a calcified nodule is a
    granuloma; a nodule the report calls a (likely) granuloma is the granuloma;
  - an old, healed or age-indeterminate fracture is a present fracture; a fractured sternal wire is
    no fracture; a skin fold mimicking a pneumothorax is no pneumothorax; a repaired hernia is no
    hernia.
"""

import json
import random
import re
import textwrap
from pathlib import Path

CODES = {
    "CM": "Cardiomegaly", "EF": "Pleural Effusion", "AT": "Atelectasis", "ED": "Edema",
    "PX": "Pneumothorax", "PN": "Pneumonia", "CO": "Consolidation", "NO": "Nodule",
    "EM": "Emphysema", "FX": "Fracture", "GR": "Granuloma", "HE": "Hernia", "SC": "Scoliosis",
}
VAL = {"+": 1, "0": 0, "?": -1, "_": None}

# ---------------------------------------------------------------- phrase bank
# (labels, template, classes). Classes: plain, neg_post, neg_scope, history, descriptor,
# nodule_mimic, synonym, hedge_axis, section, convention, device_fracture, mimic, soft_tissue,
# comparison, filler.

CARDIO = [
    ("CM +", "The heart is {mildly|moderately|markedly|severely} enlarged.", "plain"),
    ("CM +", "{Mild|Moderate|Marked|Severe|Moderate to severe|Mild to moderate} cardiomegaly.", "plain"),
    ("CM +", "Cardiomegaly {is again noted|is unchanged|is stable|persists|is again seen}.", "comparison"),
    ("CM +", "Stable {mild |moderate |}cardiomegaly.", "comparison"),
    ("CM +", "The cardiac silhouette is {mildly |moderately |}enlarged.", "plain"),
    ("CM +", "Enlarged cardiac silhouette{|, unchanged|, similar to prior}.", "plain"),
    ("CM +", "Heart size is {mildly |moderately |}enlarged{| but stable| and unchanged from [ph]}.", "comparison"),
    ("CM +", "The heart remains {mildly |moderately |markedly |}enlarged.", "comparison"),
    ("CM +", "There is {mild|moderate|marked} enlargement of the cardiac silhouette.", "plain"),
    ("CM +", "Cardiac enlargement{| is again seen| is unchanged}.", "plain"),
    ("CM +", "The heart size is increased{| compared to the prior exam| since [ph]}.", "comparison"),
    ("CM +", "Heart size is again {mildly |}enlarged.", "comparison"),
    ("CM +", "Enlarged heart{| with left ventricular configuration}.", "plain"),
    ("CM +", "The cardiomediastinal silhouette is enlarged{|, unchanged}.", "plain"),
    ("CM +", "Persistent {moderate |}cardiomegaly.", "comparison"),
    ("CM +", "The heart is large{|, with a globular configuration}.", "plain"),
    ("CM +", "Left ventricular enlargement.", "synonym"),
    ("CM +", "There is cardiomegaly{|, unchanged from [ph]}.", "plain"),
    ("CM +", "Moderate cardiomegaly is similar to [ph].", "comparison"),
    ("CM +", "The heart is enlarged in size{|, similar to the prior study}.", "comparison"),
    ("CM +", "Heart size remains {mildly |moderately |}enlarged.", "comparison"),
    ("CM + ED +", "Cardiomegaly with {mild|moderate} interstitial edema.", "plain"),
    ("CM 0", "The heart is normal in size.", "plain"),
    ("CM 0", "Heart size is normal.", "plain"),
    ("CM 0", "Normal heart size.", "plain"),
    ("CM 0", "The heart is not enlarged.", "neg_post"),
    ("CM 0", "Heart size within normal limits.", "neg_post"),
    ("CM 0", "The cardiac silhouette is within normal limits{| for size}.", "neg_post"),
    ("CM 0", "Cardiac size is normal.", "plain"),
    ("CM 0", "No cardiomegaly.", "plain"),
    ("CM 0", "Heart size and mediastinal contours are normal.", "neg_post"),
    ("CM 0", "The heart size and pulmonary vascularity appear within normal limits.", "neg_post"),
    ("CM 0 ED 0/_", "Heart size and pulmonary vascular engorgement appear within limits of normal.", "neg_post convention"),
    ("CM 0", "The cardiomediastinal silhouette is within normal limits.", "neg_post"),
    ("CM 0", "Normal cardiomediastinal silhouette.", "plain"),
    ("CM 0", "Heart size remains normal.", "comparison"),
    ("CM 0", "The heart and mediastinum are within normal limits.", "neg_post"),
    ("CM 0", "There is no cardiomegaly.", "plain"),
    ("CM 0", "Heart size is stable and normal.", "comparison"),
    ("CM 0", "The cardiac and mediastinal silhouettes are stable and unremarkable.", "neg_post"),
    ("CM 0", "The heart size is within the limits of normal.", "neg_post"),
    ("CM 0", "Cardiomediastinal silhouette and pulmonary vasculature are within normal limits.", "neg_post"),
    ("CM 0", "The cardiac contours are normal.", "plain"),
    ("CM 0", "The cardiomediastinal contours are unremarkable.", "plain"),
    ("CM 0", "Heart size is normal for technique.", "plain"),
    ("CM 0", "The heart size is normal, the mediastinum is not widened.", "plain"),
    ("CM 0", "Cardiac silhouette is normal in size and contour.", "plain"),
    ("CM ?", "Possible mild cardiomegaly.", "plain"),
    ("CM ?", "The heart may be mildly enlarged.", "plain"),
    ("CM ?", "Cardiomegaly cannot be excluded on this AP view.", "plain"),
    ("CM ?", "Questionable mild cardiomegaly.", "plain"),
    ("CM ?", "The heart is possibly mildly enlarged, accentuated by low lung volumes.", "plain"),
    ("CM ?", "Mild cardiomegaly is suspected.", "neg_post"),
    ("CM ?/+", "Borderline cardiomegaly.", "hedge_axis convention"),
    ("CM ?/+", "Heart size is borderline{| enlarged}.", "hedge_axis convention"),
    ("CM ?/+", "The heart is at the upper limits of normal in size.", "hedge_axis convention"),
    ("CM ?/+", "Heart size is upper limits of normal{|, unchanged}.", "hedge_axis convention"),
    ("CM ?/+", "Top normal heart size.", "hedge_axis convention"),
    ("CM ?/+", "The heart size is top normal.", "hedge_axis convention"),
    ("CM ?/+", "Borderline heart size{|, unchanged}.", "hedge_axis convention"),
    ("CM ?/+", "The cardiac silhouette is at the upper limits of normal.", "hedge_axis convention"),
    ("CM ?/+", "Heart size is at the upper limit of normal.", "hedge_axis convention"),
    ("CM ?/+", "The heart is borderline in size.", "hedge_axis convention"),
    ("CM ?/+", "Heart size is top-normal{| to borderline}.", "hedge_axis convention"),
    ("CM ?/+", "Stable borderline cardiomegaly.", "hedge_axis convention comparison"),
]

EFFUSION = [
    ("EF +", "{Small|Moderate|Large|Trace|Tiny|Small to moderate} [side] pleural effusion.", "plain"),
    ("EF +", "{Small|Moderate|Large} [side] pleural effusion {is present|is again seen|is noted}.", "plain"),
    ("EF +", "There is a {small|moderate|large|trace} [side] pleural effusion.", "plain"),
    ("EF +", "Small bilateral pleural effusions{|, left greater than right|, right greater than left}.", "plain"),
    ("EF +", "Bilateral pleural effusions, {larger on the right|larger on the left|slightly increased}.", "plain"),
    ("EF +", "Layering [side] pleural effusion.", "plain"),
    ("EF +", "The [side] pleural effusion is {unchanged|slightly larger|slightly smaller|decreased in size|increased in size}.", "comparison"),
    ("EF +", "Persistent small [side] effusion.", "comparison"),
    ("EF +", "No change in the small [side] pleural effusion.", "neg_scope comparison"),
    ("EF +", "No significant change in the moderate [side] pleural effusion.", "neg_scope comparison"),
    ("EF +", "Small [side] pleural effusion has increased{| since [ph]}.", "comparison"),
    ("EF +", "Loculated [side] pleural fluid.", "plain"),
    ("EF + AT +", "Moderate [side] effusion with adjacent atelectasis.", "plain"),
    ("EF +", "Interval increase in the size of the [side] pleural effusion.", "comparison"),
    ("EF +", "Decreased but persistent [side] pleural effusion.", "comparison"),
    ("EF +", "Small [side] effusion, decreased from [ph].", "comparison"),
    ("EF +", "Blunting of the [side] costophrenic angle from a small effusion.", "plain"),
    ("EF +", "Small [side] pleural effusion is slightly smaller than on the prior study.", "comparison"),
    ("EF +", "Trace bilateral pleural effusions.", "plain"),
    ("EF +", "A small amount of [side] pleural fluid is again seen.", "plain"),
    ("EF + AT +", "[Side] pleural effusion with associated compressive atelectasis.", "plain"),
    ("EF +", "Moderate-sized [side] pleural effusion, not significantly changed.", "comparison neg_scope"),
    ("EF 0", "No pleural effusion.", "plain"),
    ("EF 0 PX 0", "No pleural effusion or pneumothorax.", "plain"),
    ("EF 0", "No effusion.", "plain"),
    ("EF 0", "There is no pleural effusion.", "plain"),
    ("EF 0", "No [side] pleural effusion.", "plain"),
    ("EF 0", "The costophrenic angles are sharp.", "plain"),
    ("EF 0", "Costophrenic angles are clear.", "plain"),
    ("EF 0", "No evidence of pleural effusion.", "plain"),
    ("EF 0", "No large pleural effusion.", "plain"),
    ("EF 0", "The previously seen [side] pleural effusion has resolved.", "neg_post comparison"),
    ("EF 0", "Interval resolution of the [side] pleural effusion.", "comparison"),
    ("EF 0", "Pleural effusions are not seen.", "neg_post"),
    ("EF 0", "No pleural effusions are identified.", "plain"),
    ("EF 0", "No definite pleural effusion.", "plain"),
    ("EF 0", "No significant pleural effusion.", "plain"),
    ("EF 0", "[Side] pleural effusion has resolved.", "neg_post comparison"),
    ("EF 0", "There is no evidence of pleural effusion.", "plain"),
    ("EF 0", "No pleural fluid.", "plain"),
    ("EF 0", "The [side] effusion is no longer seen.", "neg_post comparison"),
    ("EF 0", "Both costophrenic angles are sharp.", "plain"),
    ("EF ?", "Possible small [side] pleural effusion.", "plain"),
    ("EF ?", "Trace [side] pleural effusion is possible.", "neg_post"),
    ("EF ?", "A small [side] pleural effusion cannot be excluded.", "neg_post"),
    ("EF ?", "Questionable small [side] effusion.", "plain"),
    ("EF ?", "Probable small [side] pleural effusion.", "plain"),
    ("EF ?", "Small [side] effusion versus pleural thickening.", "plain"),
    ("EF ?", "Minimal blunting of the [side] costophrenic angle could reflect a trace effusion or pleural thickening.", "plain"),
]

ATELECTASIS = [
    ("AT +", "Bibasilar atelectasis.", "plain"),
    ("AT +", "{Mild|Minimal|Subsegmental|Plate-like|Linear|Discoid} atelectasis {at the [side] lung base|in the [lobe]|at both bases}.", "plain"),
    ("AT +", "[Side] basilar atelectasis{| is unchanged| has slightly improved}.", "plain"),
    ("AT +", "There is {subsegmental|platelike|mild} atelectasis in the [lobe].", "plain"),
    ("AT +", "Atelectasis in the [lobe] {is unchanged|has improved|is slightly worse|persists}.", "comparison"),
    ("AT +", "Volume loss in the [lobe] consistent with atelectasis.", "plain"),
    ("AT +", "[Side] lower lobe collapse{| with leftward mediastinal shift}.", "plain"),
    ("AT +", "Retrocardiac opacity consistent with left lower lobe atelectasis.", "plain"),
    ("AT +", "Streaky opacities at the [side] base consistent with atelectasis.", "plain"),
    ("AT +", "Persistent [side] basilar atelectasis.", "comparison"),
    ("AT +", "Atelectatic changes at the [side] base.", "plain"),
    ("AT +", "Increased [side] basilar atelectasis.", "comparison"),
    ("AT +", "Improved but persistent [side] lower lobe atelectasis.", "comparison"),
    ("AT +", "Mild bibasilar atelectasis{|, unchanged}.", "plain"),
    ("AT +", "Linear atelectasis in the [side] mid lung.", "plain"),
    ("AT +", "There is atelectasis at the [side] lung base.", "plain"),
    ("AT +", "Low lung volumes with bibasilar atelectasis.", "plain"),
    ("AT +", "Minor atelectasis at the [side] lung base is similar to [ph].", "comparison"),
    ("AT 0", "No atelectasis.", "plain"),
    ("AT 0 CO 0", "No focal atelectasis or consolidation.", "plain"),
    ("AT 0", "Previously seen [side] basilar atelectasis has resolved.", "neg_post comparison"),
    ("AT 0", "Resolution of [side] lower lobe atelectasis.", "comparison"),
    ("AT 0", "The [side] basilar atelectasis has cleared.", "neg_post comparison"),
    ("AT ?", "Opacity at the [side] base, likely atelectasis.", "plain"),
    ("AT ?", "Linear opacity at the [side] base may represent atelectasis.", "plain"),
    ("AT ? PN ?", "[Side] basilar opacity, which may represent atelectasis or pneumonia.", "plain"),
    ("AT ?", "Minimal [side] basilar atelectasis is possible.", "neg_post"),
    ("AT ?", "Probable [side] basilar atelectasis.", "plain"),
    ("AT ?", "[Side] basilar opacities likely reflect atelectasis.", "plain"),
    ("AT ?", "Bibasilar opacities are most likely atelectasis.", "plain"),
    ("AT ?", "Streaky retrocardiac opacity is likely atelectasis.", "plain"),
    ("AT ?", "Subtle [side] basilar opacity, possibly atelectasis.", "plain"),
]

EDEMA = [
    ("ED +", "{Mild|Moderate|Severe} pulmonary edema.", "plain"),
    ("ED +", "There is {mild|moderate} interstitial edema.", "plain"),
    ("ED +", "Mild interstitial pulmonary edema {has improved|is slightly worse|is unchanged}.", "comparison"),
    ("ED +", "Pulmonary edema {is again seen|has increased|has slightly improved}.", "comparison"),
    ("ED +", "Findings consistent with {mild|moderate} pulmonary edema.", "plain"),
    ("ED +", "Diffuse bilateral airspace opacities consistent with pulmonary edema.", "plain"),
    ("ED +", "Interval worsening of pulmonary edema.", "comparison"),
    ("ED +", "Persistent mild pulmonary edema.", "comparison"),
    ("ED +", "Moderate alveolar edema{| with bilateral perihilar opacities}.", "plain"),
    ("ED +", "Mild interstitial edema{|, improved from [ph]}.", "plain"),
    ("ED + CM +", "Cardiomegaly and mild pulmonary edema.", "plain"),
    ("ED +", "Perihilar haziness and indistinct vessels, consistent with mild pulmonary edema.", "plain"),
    ("ED +/_", "{Mild|Moderate} pulmonary vascular congestion.", "descriptor convention"),
    ("ED +/_", "There is {mild|moderate} pulmonary vascular congestion.", "descriptor convention"),
    ("ED +/_", "Pulmonary vascular engorgement{|, unchanged}.", "descriptor convention"),
    ("ED +/_", "The pulmonary vasculature is engorged.", "descriptor convention"),
    ("ED +/_", "Cephalization of the pulmonary vasculature.", "descriptor convention"),
    ("ED +/_", "Findings consistent with congestive heart failure.", "descriptor convention"),
    ("ED +/0", "Mild vascular congestion without frank edema.", "descriptor convention neg_scope"),
    ("ED +/_", "Kerley B lines at the lung bases.", "descriptor convention"),
    ("ED +/_", "Mild pulmonary venous congestion{|, unchanged}.", "descriptor convention"),
    ("ED +/_ CM +", "Cardiomegaly with pulmonary vascular congestion.", "descriptor convention"),
    ("ED +/_", "Vascular congestion has improved.", "descriptor convention comparison"),
    ("ED +/_ CM +", "Cardiomegaly and pulmonary vascular congestion consistent with mild CHF.", "descriptor convention"),
    ("ED +/_", "Mild fluid overload.", "descriptor convention"),
    ("ED ?/_", "Findings suggest mild CHF.", "descriptor convention"),
    ("ED +/?", "Mild pulmonary vascular congestion, possibly early interstitial edema.", "descriptor convention"),
    ("ED +/_", "Indistinct pulmonary vasculature, compatible with vascular congestion.", "descriptor convention"),
    ("ED 0", "No pulmonary edema.", "plain"),
    ("ED 0", "No evidence of pulmonary edema.", "plain"),
    ("ED 0", "No vascular congestion or edema.", "plain"),
    ("ED 0", "No edema.", "plain"),
    ("ED 0", "Pulmonary edema has resolved.", "neg_post comparison"),
    ("ED 0", "Interval resolution of pulmonary edema.", "comparison"),
    ("ED 0/_", "No pulmonary vascular congestion.", "descriptor convention"),
    ("ED 0", "Without typical findings of pulmonary edema.", "neg_scope"),
    ("CM + ED 0", "Cardiomegaly without typical findings of pulmonary edema.", "neg_scope"),
    ("ED 0", "There are no typical findings of pulmonary edema.", "neg_scope"),
    ("ED 0", "No findings to suggest pulmonary edema.", "neg_scope"),
    ("ED 0/_", "No CHF.", "descriptor convention"),
    ("ED 0/_", "Pulmonary vascular congestion has resolved.", "descriptor convention comparison"),
    ("ED 0", "The previously seen interstitial edema has cleared.", "neg_post comparison"),
    ("ED ?", "Possible mild pulmonary edema.", "plain"),
    ("ED ?", "Mild interstitial edema cannot be excluded.", "neg_post"),
    ("ED ?", "Perihilar haziness may reflect mild edema.", "plain"),
    ("ED ?", "Possible early interstitial edema.", "plain"),
    ("ED ?/_", "Findings may represent mild fluid overload.", "descriptor convention"),
    ("ED ?", "Hazy bilateral opacities could represent edema.", "plain"),
]

PNEUMOTHORAX = [
    ("PX +", "Small [side] apical pneumothorax.", "plain"),
    ("PX +", "There is a {small|moderate|large|tiny} [side] pneumothorax.", "plain"),
    ("PX +", "[Side] pneumothorax {is slightly smaller|has increased|is unchanged|persists}.", "comparison"),
    ("PX +", "Tiny residual [side] apical pneumothorax.", "plain"),
    ("PX +", "Small [side] pneumothorax, decreased from [ph].", "comparison"),
    ("PX +", "Persistent small [side] basilar pneumothorax.", "comparison"),
    ("PX +", "Interval increase in the size of the [side] pneumothorax.", "comparison"),
    ("PX +", "Moderate [side] pneumothorax with mild mediastinal shift.", "plain"),
    ("PX +", "Small [side] hydropneumothorax.", "plain"),
    ("PX +", "[Side] chest tube in place with a small residual pneumothorax.", "plain"),
    ("PX +", "Trace [side] apical pneumothorax is again seen.", "comparison"),
    ("PX +", "New small [side] pneumothorax.", "comparison"),
    ("PX +", "A small [side] apical pneumothorax measures approximately [n] cm.", "plain"),
    ("PX +", "Large [side] tension pneumothorax with mediastinal shift.", "plain"),
    ("PX + EF +", "Small [side] hydropneumothorax with a layering pleural effusion.", "plain"),
    ("PX 0", "No pneumothorax.", "plain"),
    ("PX 0", "No pneumothorax is seen.", "plain"),
    ("PX 0", "No evidence of pneumothorax.", "plain"),
    ("PX 0", "There is no pneumothorax.", "plain"),
    ("PX 0", "Pneumothorax is not seen.", "neg_post"),
    ("PX 0", "No residual pneumothorax.", "plain"),
    ("PX 0", "The previously seen [side] pneumothorax has resolved.", "neg_post comparison"),
    ("PX 0", "No pneumothorax following chest tube removal.", "plain"),
    ("PX 0", "No pneumothorax after [side] thoracentesis.", "plain"),
    ("PX 0", "[Side] pneumothorax is no longer seen.", "neg_post comparison"),
    ("PX 0", "Resolution of the [side] apical pneumothorax.", "comparison"),
    ("PX 0", "No pneumothorax is identified.", "plain"),
    ("PX 0", "No evidence of pneumothorax following the procedure.", "plain"),
    ("PX ?", "Possible tiny [side] apical pneumothorax.", "plain"),
    ("PX ?", "A tiny [side] apical pneumothorax cannot be excluded.", "neg_post"),
    ("PX ?", "Questionable small [side] apical pneumothorax.", "plain"),
    ("PX ?", "Equivocal tiny [side] apical pneumothorax.", "plain"),
    ("PX 0", "Skin fold projects over the [side] hemithorax, mimicking a pneumothorax.", "mimic"),
    ("PX 0", "A skin fold overlies the [side] apex, not to be confused with pneumothorax.", "mimic"),
    ("PX 0", "Linear lucency at the [side] apex likely represents a skin fold rather than pneumothorax.", "mimic"),
    ("PX 0", "The [side] medial scapular border simulates a pneumothorax; no pneumothorax is present.", "mimic"),
]

PNEUMONIA = [
    ("PN +", "[Lobe] pneumonia.", "plain"),
    ("PN +", "Findings consistent with [lobe] pneumonia.", "plain"),
    ("PN + CO +", "Consolidation in the [lobe] consistent with pneumonia.", "plain"),
    ("PN +", "Multifocal pneumonia {has progressed|is slightly improved|is unchanged}.", "comparison"),
    ("PN +", "Airspace opacity in the [lobe] compatible with pneumonia.", "plain"),
    ("PN +", "[Lobe] pneumonia is again seen.", "comparison"),
    ("PN +", "Persistent [lobe] pneumonia.", "comparison"),
    ("PN +", "Improving [lobe] pneumonia.", "comparison"),
    ("PN +", "Worsening bilateral pneumonia.", "comparison"),
    ("PN +", "Aspiration pneumonia in the [lobe].", "plain"),
    ("PN + CO +", "[Lobe] consolidation representing pneumonia.", "plain"),
    ("PN +", "Patchy opacities in the [lobe] represent pneumonia.", "plain"),
    ("PN + CO +", "Dense consolidation of the [lobe] with air bronchograms, consistent with pneumonia.", "plain"),
    ("PN +", "Bilateral lower lobe pneumonia{|, worse on the right}.", "plain"),
    ("PN 0", "No pneumonia.", "plain"),
    ("PN 0", "No evidence of pneumonia.", "plain"),
    ("PN 0", "No focal airspace opacity to suggest pneumonia.", "neg_scope"),
    ("CO 0 PN 0", "No focal consolidation to suggest pneumonia.", "neg_scope"),
    ("PN 0", "No findings to suggest pneumonia.", "neg_scope"),
    ("PN 0", "No focal air space opacity to suggest a pneumonia.", "neg_scope"),
    ("PN 0", "No focal airspace disease is seen to suggest pneumonia.", "neg_scope"),
    ("PN 0", "The previously seen [lobe] pneumonia has resolved.", "neg_post comparison"),
    ("PN 0", "Interval resolution of the [lobe] pneumonia.", "comparison"),
    ("PN 0", "No radiographic evidence of pneumonia.", "plain"),
    ("CO 0 PN 0", "No consolidation or other findings of pneumonia.", "neg_scope"),
    ("PN 0", "There is no focal opacity concerning for pneumonia.", "neg_scope"),
    ("PN 0", "No opacity suspicious for pneumonia.", "neg_scope"),
    ("PN 0", "Lungs are clear without findings suggestive of pneumonia.", "neg_scope"),
    ("PN ?", "Opacity in the [lobe] concerning for pneumonia.", "plain"),
    ("PN ?", "[Lobe] opacity suspicious for pneumonia.", "plain"),
    ("PN ?", "Early pneumonia cannot be excluded.", "neg_post"),
    ("PN ?", "Possible early [lobe] pneumonia.", "plain"),
    ("AT ? PN ?", "Patchy opacity in the [lobe] may represent atelectasis or pneumonia.", "plain"),
    ("PN ?", "Findings may represent pneumonia in the appropriate clinical setting.", "plain"),
    ("AT ? PN ?", "[Side] basilar opacity, atelectasis versus pneumonia.", "plain"),
    ("PN ?", "Developing pneumonia is not excluded.", "neg_post"),
    ("PN ?", "Ill-defined opacity in the [lobe] is suggestive of pneumonia.", "neg_scope"),
    ("PN ?", "Right infrahilar opacity could represent pneumonia.", "plain"),
    ("PN +/_", "Opacity in the [lobe] consistent with infection.", "descriptor convention"),
    ("PN ?/_", "Findings suggestive of an infectious process.", "descriptor convention"),
    ("PN 0/_", "No evidence of infection.", "descriptor convention"),
    ("PN ?/_", "[Lobe] opacity could reflect infection or aspiration.", "descriptor convention"),
    ("PN ?/_", "[Lobe] opacity is concerning for infection.", "descriptor convention"),
    ("PN +/_", "Patchy [lobe] opacity compatible with an infectious process.", "descriptor convention"),
    ("PN _", "Scarring from old infection in the [lobe].", "history"),
    ("GR +", "Sequelae of prior granulomatous infection.", "history"),
    ("PN _", "Biapical pleural thickening, likely sequelae of prior infection.", "history"),
    ("PN _", "Findings likely represent sequela of remote infection.", "history"),
    ("PN _", "Postinflammatory scarring in the [lobe].", "history"),
    ("PN _", "Mild [lobe] scarring from prior pneumonia.", "history"),
    ("PN _", "Linear scarring in the [lobe] related to prior infection.", "history"),
    ("PN _", "Stable right apical pleural-parenchymal scarring, sequela of old infection.", "history"),
    ("PN _", "Fibrotic changes in the [lobe] from prior infection.", "history"),
    ("PN _", "Calcified pleural plaque from remote infection.", "history"),
]

CONSOLIDATION = [
    ("CO +", "Focal consolidation in the [lobe].", "plain"),
    ("CO +", "There is {dense|patchy|focal} consolidation in the [lobe].", "plain"),
    ("CO +", "[Lobe] consolidation {with air bronchograms|is unchanged|has increased}.", "plain"),
    ("CO +", "Airspace consolidation at the [side] base.", "plain"),
    ("CO +", "Consolidation of the [lobe] with air bronchograms.", "plain"),
    ("CO +", "Persistent [lobe] consolidation.", "comparison"),
    ("CO +", "Interval development of [lobe] consolidation.", "comparison"),
    ("CO +", "Dense retrocardiac consolidation.", "plain"),
    ("CO +", "Patchy consolidation in both lower lobes.", "plain"),
    ("CO +", "Consolidative opacity in the [lobe]{|, slightly improved}.", "plain"),
    ("CO 0", "No focal consolidation.", "plain"),
    ("CO 0", "No consolidation.", "plain"),
    ("CO 0", "Lungs are clear without focal consolidation.", "plain"),
    ("CO 0 EF 0 PX 0", "No focal consolidation, pleural effusion, or pneumothorax.", "neg_scope"),
    ("CO 0 EF 0 PX 0", "There is no focal consolidation, pleural effusion or pneumothorax.", "neg_scope"),
    ("CO 0 EF 0 PX 0", "The lungs are clear of consolidation, effusion, or pneumothorax.", "neg_scope"),
    ("CO 0", "The [lobe] consolidation has resolved.", "neg_post comparison"),
    ("CO 0", "No airspace consolidation.", "plain"),
    ("CO 0", "There is no focal consolidation.", "plain"),
    ("CO 0", "No confluent consolidation.", "plain"),
    ("CO 0 EF 0 PX 0", "No focal airspace consolidation, effusion, or pneumothorax is seen.", "neg_scope"),
    ("CO 0 EF 0 PX 0", "No evidence of consolidation, effusion or pneumothorax.", "neg_scope"),
    ("CO ?", "Possible [lobe] consolidation.", "plain"),
    ("CO ?", "Subtle opacity in the [lobe], possibly early consolidation.", "plain"),
    ("CO ?", "Consolidation in the [lobe] cannot be excluded.", "neg_post"),
    ("AT ? CO ?", "[Lobe] opacity may represent atelectasis or consolidation.", "plain"),
    ("AT ? CO ?", "Atelectasis versus consolidation at the [side] base.", "plain"),
]

NODULE = [
    ("NO +", "[Size] nodule in the [lobe].", "plain"),
    ("NO +", "There is a [size] nodular opacity in the [lobe].", "plain"),
    ("NO +", "A [size] pulmonary nodule is seen in the [lobe].", "plain"),
    ("NO +", "Stable [size] [lobe] nodule.", "comparison"),
    ("NO +", "Multiple pulmonary nodules{|, consistent with metastatic disease}.", "plain"),
    ("NO +", "Small nodular density in the [lobe]{|, unchanged}.", "plain"),
    ("NO +", "Scattered bilateral pulmonary nodules.", "plain"),
    ("NO +", "A [size] noncalcified nodule in the [lobe].", "plain"),
    ("NO +", "A [size] non-calcified nodule projects over the [lobe].", "nodule_mimic"),
    ("NO +", "Spiculated nodule in the [lobe] concerning for malignancy.", "plain"),
    ("NO +", "[Lobe] nodule is slightly larger.", "comparison"),
    ("NO +", "New [size] nodule in the [lobe]; recommend CT.", "plain"),
    ("NO +", "[Size] nodular opacity in the [lobe], not seen on [ph].", "comparison"),
    ("NO + GR +", "A [size] nodule in the [lobe] and a calcified granuloma in the [lobe].", "nodule_mimic"),
    ("NO +", "Right upper lobe nodule measuring [size].", "plain"),
    ("NO 0", "No pulmonary nodules.", "plain"),
    ("NO 0", "No suspicious pulmonary nodules or masses.", "plain"),
    ("NO 0", "No nodules or masses.", "plain"),
    ("NO 0", "The previously described [lobe] nodule is not seen.", "neg_post comparison"),
    ("NO 0", "No discrete nodule.", "plain"),
    ("NO ?", "Possible [size] nodule in the [lobe].", "plain"),
    ("NO ?", "Questionable nodular opacity in the [lobe]; recommend CT.", "plain"),
    ("NO ?", "Possible nodule in the [lobe] versus overlapping vessels.", "plain"),
    ("NO ?", "[Size] nodular density in the [side] lower lung likely represents a nipple shadow.", "nodule_mimic"),
    ("NO 0", "Nodular opacity at the [side] base consistent with nipple shadow.", "nodule_mimic"),
    ("NO 0", "The nodular density at the [side] lung base represents a nipple shadow.", "nodule_mimic"),
    ("", "Bilateral nipple shadows.", "nodule_mimic filler"),
    ("NO ?", "Nodular opacity in the [side] lower lung, likely a nipple shadow; repeat with nipple markers could be obtained.", "nodule_mimic"),
    ("NO ?", "Small nodular opacity projecting over the [side] lower lung probably represents the nipple.", "nodule_mimic"),
    ("NO ? FX ?", "Nodular density overlying the [rib] rib, likely representing a healing fracture.", "nodule_mimic"),
    ("NO 0 FX +", "Nodular density overlying the [rib] rib represents a healing fracture.", "nodule_mimic"),
    ("NO 0 FX +", "Nodular density at the [rib] rib, consistent with healing fracture.", "nodule_mimic"),
    ("NO ?", "Small nodular density projecting over the [rib] rib.", "nodule_mimic"),
    ("NO ?", "A [size] nodular opacity overlies the [rib] rib.", "nodule_mimic"),
    ("NO ?", "Nodular opacity in the [side] upper chest may represent a skin lesion.", "nodule_mimic"),
    ("NO ?", "Nodular opacity in the [side] mid lung likely represents an end-on vessel.", "nodule_mimic"),
    ("NO 0", "The nodular opacity in the [side] lower lung is a bone island in the [rib] rib.", "nodule_mimic"),
    ("GR +", "Calcified [size] nodule in the [lobe], consistent with a granuloma.", "nodule_mimic"),
    ("GR +", "A [size] calcified nodule in the [lobe] is unchanged.", "nodule_mimic"),
    ("GR +", "Calcified [size] nodule in the [lobe].", "nodule_mimic"),
    ("GR ?", "[Size] nodular opacity in the [lobe], likely a calcified granuloma.", "nodule_mimic"),
    ("GR +", "Nodule in the [lobe] which is densely calcified, compatible with old granulomatous disease.", "nodule_mimic"),
    ("GR +", "Punctate calcified nodules in the [side] upper lobe.", "nodule_mimic"),
    ("GR +", "Stable calcified nodular density in the [lobe].", "nodule_mimic"),
    ("GR +", "The [size] nodule in the [lobe] is calcified, most likely a granuloma.", "nodule_mimic"),
    ("GR ?", "Nodular density in the [lobe] may represent a granuloma.", "nodule_mimic"),
    ("GR +", "A calcified [size] nodular density in the [lobe] is consistent with a granuloma.", "nodule_mimic"),
]

EMPHYSEMA = [
    ("EM +", "Emphysema.", "plain"),
    ("EM +", "{Mild|Moderate|Severe|Advanced} emphysema{| is again noted| with upper lobe predominance}.", "plain"),
    ("EM +", "Emphysematous changes{| in the upper lobes| are again noted}.", "plain"),
    ("EM +", "Changes of emphysema{| and chronic bronchitis}.", "plain"),
    ("EM +", "Hyperinflated lungs with emphysematous changes.", "descriptor"),
    ("EM +", "Bullous emphysema in the [side] upper lobe.", "plain"),
    ("EM +", "Centrilobular emphysema{| is better seen on CT}.", "plain"),
    ("EM +", "Background emphysema.", "plain"),
    ("EM +", "Pulmonary emphysema with biapical bullae.", "descriptor"),
    ("EM +", "Hyperexpanded lungs consistent with emphysema.", "descriptor"),
    ("EM +", "Emphysema with hyperinflation and flattening of the diaphragms.", "descriptor"),
    ("EM +", "COPD/emphysema{| without acute process}.", "descriptor"),
    ("EM +", "Lungs are hyperinflated, compatible with emphysema.", "descriptor"),
    ("EM +", "Severe emphysema with large apical bullae.", "plain"),
    ("EM 0", "No evidence of emphysema.", "plain"),
    ("EM ?", "Possible emphysema.", "plain"),
    ("EM ?", "Hyperlucent lungs may reflect emphysema.", "descriptor"),
    ("EM ?", "Hyperinflation, which may be due to emphysema.", "descriptor"),
    ("", "The lungs are hyperinflated.", "descriptor"),
    ("", "Hyperexpanded lungs{| consistent with COPD| compatible with chronic obstructive pulmonary disease}.", "descriptor"),
    ("", "Hyperinflation{|, unchanged}.", "descriptor"),
    ("", "Lungs are hyperexpanded with flattening of the diaphragms.", "descriptor"),
    ("", "Findings of COPD.", "descriptor"),
    ("", "Changes of COPD{| without acute process}.", "descriptor"),
    ("", "Large lung volumes.", "descriptor"),
    ("", "Flattened hemidiaphragms{|, suggesting COPD}.", "descriptor"),
    ("", "Apical bullae.", "descriptor"),
    ("", "Increased AP diameter of the chest consistent with COPD.", "descriptor"),
    ("", "Hyperinflation suggests chronic obstructive pulmonary disease.", "descriptor"),
    ("", "The lungs are hyperexpanded but clear.", "descriptor"),
    ("", "Hyperaerated lungs.", "descriptor"),
    ("", "Subcutaneous emphysema in the [side] chest wall.", "soft_tissue"),
    ("", "Extensive subcutaneous emphysema{| has decreased}.", "soft_tissue"),
    ("", "Small amount of subcutaneous air along the [side] chest wall.", "soft_tissue"),
    ("", "No subcutaneous emphysema.", "soft_tissue"),
    ("", "Subcutaneous emphysema and pneumomediastinum.", "soft_tissue"),
    ("", "Soft tissue edema of the [side] chest wall.", "soft_tissue"),
    ("", "Diffuse subcutaneous edema.", "soft_tissue"),
]

FRACTURE = [
    ("FX +", "Acute fracture of the [rib] rib.", "plain"),
    ("FX +", "Displaced [side] clavicle fracture.", "plain"),
    ("FX +", "Healed [side] rib fractures.", "plain"),
    ("FX +", "Old healed fracture of the [rib] rib.", "plain"),
    ("FX +", "Nondisplaced fracture of the [rib] rib.", "plain"),
    ("FX +", "[Side] {posterior|lateral|anterior} rib fractures{|, unchanged| are again noted}.", "plain"),
    ("FX +", "Multiple healed [side] rib fractures.", "plain"),
    ("FX +", "Compression fracture of a {lower|mid} thoracic vertebral body{|, unchanged}.", "plain"),
    ("FX +", "Age-indeterminate compression fracture of [tv].", "hedge_axis"),
    ("FX +", "Age indeterminate fracture of the [rib] rib.", "hedge_axis"),
    ("FX +", "Fracture of the [rib] rib of indeterminate age.", "hedge_axis"),
    ("FX +", "Old healed [side] clavicle fracture.", "plain"),
    ("FX +", "Healing fracture of the [rib] rib.", "plain"),
    ("FX +", "Remote [side] rib fractures.", "plain"),
    ("FX +", "Deformity of the [side] clavicle from a remote fracture.", "plain"),
    ("FX +", "[Side] rib fractures, likely old.", "hedge_axis"),
    ("FX +", "Likely old [side] rib fractures.", "hedge_axis"),
    ("FX +", "Fracture of the [side] humeral neck.", "plain"),
    ("FX +", "Mild compression fracture of [tv] of uncertain age.", "hedge_axis"),
    ("FX +", "Age-indeterminate fractures of the [side] {5th and 6th|6th and 7th|7th through 9th} ribs.", "hedge_axis"),
    ("FX +", "[Side] {6th|7th|8th} rib fracture, age indeterminate.", "hedge_axis"),
    ("FX +", "Chronic-appearing [side] rib fractures.", "plain"),
    ("FX 0", "No acute fracture.", "plain"),
    ("FX 0", "No displaced rib fracture.", "plain"),
    ("", "No acute osseous abnormality.", "filler"),
    ("FX 0", "No fractures are identified.", "plain"),
    ("FX 0", "No rib fractures are seen.", "plain"),
    ("FX 0", "No evidence of acute fracture.", "plain"),
    ("FX ?", "Possible nondisplaced fracture of the [rib] rib.", "plain"),
    ("FX ?", "A nondisplaced rib fracture cannot be excluded.", "neg_post"),
    ("FX ?", "Questionable fracture of the [rib] rib; dedicated rib views could be obtained.", "plain"),
    ("FX ?", "Subtle lucency through the [rib] rib may represent a nondisplaced fracture.", "plain"),
    ("", "One of the sternotomy wires is fractured.", "device_fracture"),
    ("", "Fractured {second|third|uppermost|lowermost} sternal wire{|, unchanged}.", "device_fracture"),
    ("", "The {uppermost|second|lowermost} sternotomy wire is fractured{|, unchanged}.", "device_fracture"),
    ("", "Fracture of the {lowermost|fourth|second} sternal wire.", "device_fracture"),
    ("", "Median sternotomy wires, the {second|uppermost} of which is fractured.", "device_fracture"),
    ("", "Intact median sternotomy wires.", "filler"),
    ("", "Fractured pacemaker lead in the [side] chest.", "device_fracture"),
    ("FX +", "Sternotomy wires are intact. Healed [side] rib fractures.", "device_fracture"),
]

GRANULOMA = [
    ("GR +", "Calcified granuloma in the [lobe].", "plain"),
    ("GR +", "Scattered calcified granulomas.", "plain"),
    ("GR +", "Stable calcified granuloma{s|} in the [lobe].", "comparison"),
    ("GR +", "Sequelae of prior granulomatous disease.", "plain"),
    ("GR +", "Calcified hilar lymph nodes and granulomas consistent with prior granulomatous disease.", "plain"),
    ("GR +", "Old granulomatous disease.", "plain"),
    ("GR +", "Sequelae of prior granulomatous infection with calcified granulomas in the [side] upper lobe.", "history"),
    ("GR +", "A small calcified granuloma projects over the [lobe].", "plain"),
    ("GR +", "Granuloma in the [lobe].", "plain"),
    ("GR +", "Calcified nodule in the [lobe] consistent with granuloma.", "nodule_mimic"),
    ("GR +", "Punctate calcified granulomas in both lungs.", "plain"),
    ("GR +", "Healed granulomatous disease.", "plain"),
    ("GR +", "[Side] upper lobe granuloma{| is unchanged}.", "plain"),
    ("GR ?", "Punctate calcifications in the [lobe], likely calcified granulomas.", "plain"),
    ("GR +", "Calcified [ph] in the [lobe] consistent with granuloma.", "plain"),
    ("GR +", "Stable [ph] granuloma.", "plain"),
    ("GR 0", "No calcified granulomas.", "plain"),
]

HERNIA = [
    ("HE +", "{Small|Moderate|Large} hiatal hernia.", "plain"),
    ("HE +", "There is a {small|moderate|large} hiatal hernia{|, unchanged}.", "plain"),
    ("HE +", "Retrocardiac air-fluid level consistent with hiatal hernia.", "plain"),
    ("HE +", "Hiatal hernia is again noted.", "comparison"),
    ("HE +", "Large paraesophageal hernia.", "synonym"),
    ("HE +", "Moderate-sized hiatus hernia.", "synonym"),
    ("HE +", "Hiatal hernia containing a portion of the stomach.", "plain"),
    ("HE +", "Retrocardiac lucency{| with an air-fluid level}, compatible with a hiatal hernia.", "plain"),
    ("HE +", "A large hiatal hernia is present behind the heart.", "plain"),
    ("HE 0", "No hiatal hernia.", "plain"),
    ("HE ?", "Retrocardiac density may represent a hiatal hernia.", "plain"),
    ("HE ?", "Possible small hiatal hernia.", "plain"),
    ("", "Status post hiatal hernia repair.", "history"),
    ("", "Postsurgical changes from prior hiatal hernia repair.", "history"),
]

SCOLIOSIS = [
    ("SC +", "{Mild|Moderate|Severe} {dextroscoliosis|levoscoliosis|scoliosis} of the {thoracic|thoracolumbar} spine.", "plain"),
    ("SC +", "Mild dextrocurvature of the thoracic spine.", "synonym"),
    ("SC +", "Levocurvature of the {thoracic|lumbar} spine.", "synonym"),
    ("SC +", "S-shaped curvature of the spine.", "synonym"),
    ("SC +", "S-shaped scoliosis{|, unchanged}.", "synonym"),
    ("SC +", "Thoracolumbar scoliosis{|, unchanged}.", "plain"),
    ("SC +", "Mild curvature of the thoracic spine convex to the right.", "synonym"),
    ("SC +", "Mild rightward convex curvature of the thoracic spine.", "synonym"),
    ("SC +", "Dextroconvex curvature of the thoracic spine.", "synonym"),
    ("SC +", "Levoconvex thoracic scoliosis.", "synonym"),
    ("SC +", "Scoliosis is again noted.", "comparison"),
    ("SC +", "Rotatory scoliosis.", "synonym"),
    ("SC +", "Kyphoscoliosis.", "synonym"),
    ("SC +", "Curvature of the thoracic spine.", "synonym"),
    ("SC +", "Mild thoracic dextroscoliosis.", "plain"),
    ("SC +", "{Dextroscoliosis|Levoscoliosis}, unchanged.", "plain"),
    ("SC +", "Mild levocurvature of the lumbar spine is partially imaged.", "synonym"),
    ("SC +", "Dextrocurvature of the upper thoracic spine.", "synonym"),
    ("SC +", "The thoracic spine is curved convex to the left.", "synonym"),
    ("SC 0", "No scoliosis.", "plain"),
    ("", "Exaggerated thoracic kyphosis.", "synonym"),
    ("", "Increased thoracic kyphotic curvature.", "synonym"),
    ("", "Normal alignment and curvature of the thoracic spine.", "synonym"),
]

FILLER = [
    ("", "The lungs are clear.", "filler lungs"),
    ("", "Lungs are clear bilaterally.", "filler lungs"),
    ("", "No acute cardiopulmonary abnormality.", "filler normal"),
    ("", "No acute cardiopulmonary process.", "filler normal"),
    ("", "No acute osseous abnormalities.", "filler"),
    ("", "Mediastinal contours are unremarkable.", "filler"),
    ("", "The trachea is midline.", "filler"),
    ("", "Degenerative changes of the thoracic spine.", "filler"),
    ("", "Surgical clips in the right upper quadrant.", "filler"),
    ("", "Median sternotomy wires are intact.", "filler"),
    ("", "Endotracheal tube terminates [n] cm above the carina.", "filler"),
    ("", "[Side] IJ central venous catheter tip in the SVC.", "filler"),
    ("", "Nasogastric tube courses below the diaphragm.", "filler"),
    ("", "Aortic atherosclerotic calcifications.", "filler"),
    ("", "Tortuous thoracic aorta.", "filler"),
    ("", "Low lung volumes.", "filler"),
    ("", "Osseous structures are intact.", "filler"),
    ("", "Visualized osseous structures are unremarkable.", "filler"),
    ("", "No free air under the diaphragm.", "filler"),
    ("", "Pulmonary vascularity is within normal limits.", "filler"),
    ("", "The hilar contours are normal.", "filler"),
    ("", "The pulmonary vasculature is normal.", "filler"),
    ("", "Mild degenerative changes of the thoracic spine.", "filler"),
    ("", "[Side] chest wall pacemaker with leads in the right atrium and right ventricle.", "filler"),
    ("", "The XXXX are normal.", "filler"),
    ("", "XXXX XXXX are within normal limits.", "filler"),
    ("", "Pulmonary vasculature and hila are normal.", "filler"),
    ("", "Bony thorax is intact.", "filler"),
    ("", "The aorta is tortuous and calcified.", "filler"),
    ("", "Lungs are well expanded and clear.", "filler lungs"),
    ("", "There is no focal airspace disease.", "filler lungs"),
    ("", "No focal airspace opacity.", "filler lungs"),
]


MORE = [
    ("CM + EF + ED +", "Cardiomegaly, small bilateral pleural effusions and mild pulmonary edema.", "plain"),
    ("CM + EF + ED +/_", "Stable cardiomegaly with small bilateral effusions and pulmonary vascular congestion.", "descriptor convention"),
    ("CO 0 EF 0 PX 0 ED 0", "No focal consolidation, pleural effusion, pneumothorax, or pulmonary edema.", "neg_scope"),
    ("EF 0 PX 0 CO 0", "There is no pleural effusion, pneumothorax, or focal airspace consolidation.", "neg_scope"),
    ("CM 0 EF 0 PX 0", "Normal heart size. No pleural effusion or pneumothorax.", "plain"),
    ("EF + AT +", "Compared to [ph], the [side] pleural effusion has decreased, with residual basilar atelectasis.", "comparison"),
    ("EF +", "Compared with the prior study, the small [side] pleural effusion is unchanged.", "comparison"),
    ("PX 0", "Compared to the prior exam, the [side] pneumothorax has resolved.", "comparison neg_post"),
    ("PX +", "In comparison with the study of [ph], the [side] apical pneumothorax is slightly smaller.", "comparison"),
    ("AT + EF +", "There is new left retrocardiac opacity with volume loss consistent with atelectasis, and a small left pleural effusion.", "plain"),
    ("ED + EF +", "Moderate pulmonary edema with small bilateral pleural effusions, worse than on [ph].", "comparison"),
    ("ED 0/_ CM +", "Cardiomegaly without pulmonary vascular congestion.", "descriptor convention"),
    ("CM + ED 0", "The heart is enlarged but there is no pulmonary edema.", "neg_scope"),
    ("PN ? CO ?", "Patchy opacity in the [lobe] could reflect consolidation from pneumonia.", "plain"),
    ("AT + PN ?/_", "Bibasilar atelectasis; superimposed infection is not excluded.", "descriptor convention"),
    ("AT ? PN ?", "Opacity at the [side] base could be atelectasis, although pneumonia is not excluded.", "plain"),
    ("NO + GR +", "Calcified granuloma in the [lobe]. Separate [size] noncalcified nodule in the [lobe].", "nodule_mimic"),
    ("EM + HE +", "Emphysema and a moderate hiatal hernia.", "plain"),
    ("SC + FX +", "Dextroscoliosis and healed [side] rib fractures.", "plain"),
    ("CM ?/+ ED 0", "Heart size is borderline without pulmonary edema.", "hedge_axis convention"),
    ("CM 0 EF 0", "The heart is not enlarged and there are no effusions.", "plain"),
    ("PX 0 EF 0", "Neither pneumothorax nor pleural effusion.", "neg_scope"),
    ("EF 0 PX 0", "No effusion or pneumothorax is seen on either side.", "neg_scope"),
    ("CM + ED +/_ EF +", "Cardiomegaly with vascular congestion and bilateral pleural effusions, consistent with CHF.", "descriptor convention"),
    ("PN 0 ED 0", "No evidence of pneumonia or pulmonary edema.", "plain"),
    ("CO 0 AT ?", "No focal consolidation; minimal [side] basilar atelectasis is possible.", "neg_scope"),
    ("EF ? PX 0", "No pneumothorax, possible small [side] effusion.", "neg_scope"),
    ("PX 0 AT ?", "No pneumothorax. [Side] basilar opacity, likely atelectasis.", "plain"),
    ("EF 0 CO ?", "No pleural effusion, but [lobe] opacity may represent consolidation.", "neg_scope"),
    ("PN 0 AT +", "No pneumonia. Mild bibasilar atelectasis.", "plain"),
    ("EF + PX 0", "No pneumothorax, but there is a small [side] pleural effusion.", "neg_scope"),
    ("FX 0 PX 0", "No displaced rib fractures or pneumothorax.", "neg_scope"),
    ("FX ? PX 0", "No pneumothorax. Nondisplaced rib fractures cannot be excluded; a dedicated rib series may be obtained.", "plain"),
    ("ED 0 CM 0", "No cardiomegaly or pulmonary edema.", "plain"),
    ("CO 0 NO ?", "No focal consolidation. Possible [size] nodule in the [lobe]; CT could be considered.", "plain"),
    ("EM + PX 0", "Emphysema. No pneumothorax.", "plain"),
    ("GR + CO 0", "Calcified granuloma in the [lobe]. No focal consolidation.", "plain"),
    ("ED +/_", "Hilar vascular engorgement.", "descriptor convention"),
    ("ED +/_", "Prominence of the pulmonary vasculature suggesting mild vascular congestion.", "descriptor convention"),
    ("ED ?/_", "Mild pulmonary vascular congestion cannot be excluded.", "descriptor convention"),
    ("", "Mildly prominent interstitial markings{|, likely chronic}.", "descriptor"),
    ("CO 0", "Prominent interstitial markings without focal consolidation.", "descriptor"),
    ("", "Coarse interstitial markings, unchanged.", "descriptor"),
    ("", "Increased interstitial markings{| bilaterally}.", "descriptor"),
    ("", "Chronic-appearing prominence of the interstitial markings.", "descriptor"),
    ("PN +", "Right middle lobe pneumonia with silhouetting of the right heart border.", "plain"),
    ("PN +", "Left lower lobe pneumonia, improved since [ph].", "comparison"),
    ("PN +", "New opacity in the [lobe] consistent with pneumonia.", "plain"),
    ("PN +", "Pneumonia in the [lobe] is slightly larger.", "comparison"),
    ("PN 0", "No acute pneumonia.", "plain"),
    ("PN 0", "Lungs clear without evidence of pneumonia.", "plain"),
    ("CO +", "Right middle lobe consolidation obscuring the right heart border.", "plain"),
    ("CO +", "Consolidation in the [lobe] has slightly improved.", "comparison"),
    ("CO +", "New [lobe] consolidation.", "comparison"),
    ("CO 0", "No new consolidation.", "plain"),
    ("HE +", "Small hiatal hernia is unchanged.", "comparison"),
    ("HE +", "Hiatal hernia.", "plain"),
    ("HE +", "Moderate hiatal hernia with an air-fluid level.", "plain"),
    ("HE +", "There is a hiatal hernia{| behind the heart}.", "plain"),
    ("HE +", "Incidental note of a small hiatal hernia.", "plain"),
    ("HE +", "A retrocardiac hiatal hernia is again seen.", "comparison"),
    ("HE +", "Large hiatal hernia, similar to prior.", "comparison"),
    ("HE +", "Stable moderate to large hiatus hernia.", "synonym comparison"),
    ("HE +", "Hiatal hernia with intrathoracic stomach.", "plain"),
    ("HE ?", "Retrocardiac air-fluid level may reflect a hiatal hernia.", "plain"),
    ("HE 0", "No evidence of hiatal hernia.", "plain"),
    ("NO +", "A [size] nodule projects over the [lobe], better seen on the lateral view.", "plain"),
    ("NO +", "Two small nodules in the [lobe].", "plain"),
    ("NO +", "Innumerable bilateral pulmonary nodules.", "plain"),
    ("NO +", "[Size] [side] upper lobe nodule, unchanged since [ph].", "comparison"),
    ("AT +", "Patchy atelectasis in the [lobe].", "plain"),
    ("AT +", "Left lower lobe atelectasis with elevation of the left hemidiaphragm.", "plain"),
    ("PX +", "Tiny right apical pneumothorax after chest tube removal.", "plain"),
    ("PX +", "Small anterior pneumothorax on the [side].", "plain"),
    ("EF +", "Small [side] pleural effusion tracking into the major fissure.", "plain"),
    ("EF + AT +", "Moderate [side] pleural effusion with overlying atelectasis.", "plain"),
    ("FX +", "Displaced fracture of the [side] clavicle.", "plain"),
    ("FX +", "Healed fractures of the [side] {5th|6th} and {7th|8th} ribs.", "plain"),
    ("FX +", "Acute-appearing fracture of the [rib] rib.", "plain"),
    ("EM +", "Emphysematous lungs.", "plain"),
    ("EM +", "Upper lobe predominant emphysema.", "plain"),
    ("SC +", "Scoliosis.", "plain"),
    ("SC +", "Moderate S-shaped thoracolumbar scoliosis.", "synonym"),
    ("GR +", "Right hilar calcified granuloma.", "plain"),
    ("GR +", "Calcified granulomata in the [lobe].", "plain"),
    ("CM +", "Cardiomegaly, similar to [ph].", "comparison"),
    ("CM +", "The heart is enlarged with a cardiothoracic ratio of approximately 0.6.", "plain"),
    ("ED +", "Worsening interstitial edema.", "comparison"),
    ("ED +", "Pulmonary edema, slightly improved since [ph].", "comparison"),
    ("CM 0", "The heart size and mediastinal contours appear within normal limits.", "neg_post"),
    ("", "XXXX XXXX and lateral chest examination was obtained.", "filler"),
    ("SC +", "Mild thoracic XXXX scoliosis.", "plain"),
    ("CO 0", "No focal airspace consolidation, XXXX XXXX XXXX.", "plain"),
    ("PN _ EF 0", "History of pneumonia. No pleural effusion.", "history"),
    ("PN _", "Right upper lobe scarring in this patient with a history of pneumonia.", "history"),
    ("ED _ CM +", "Cardiomegaly in this patient with a known history of CHF.", "history"),
    ("GR + PN _", "Old granulomatous infection and prior pneumonia in the [lobe].", "history"),
    ("EF ? AT ? PN ?", "Increased opacification of the left lung base with obscuration of the left hemidiaphragm, concerning for pleural effusion and atelectasis, though superimposed pneumonia is not excluded.", "plain"),
    ("EF ?", "There is mild blunting of the [side] costophrenic angle which may represent a small effusion or pleural thickening.", "plain"),
    ("ED +/_", "Mild pulmonary vascular redistribution.", "descriptor convention"),
    ("NO ?", "Apparent nodular density in the [side] lower lung likely represents overlapping vascular shadows.", "nodule_mimic"),
    ("NO ?", "Small nodular opacity in the [side] mid lung could be a nipple shadow, though a pulmonary nodule is not excluded.", "nodule_mimic"),
    ("NO 0", "Bilateral nipple shadows are noted; no pulmonary nodule.", "nodule_mimic"),
    ("PX 0", "Pneumothorax is not definitely identified.", "neg_post"),
    ("PX 0", "A residual [side] pneumothorax is not clearly visualized on this study.", "neg_post"),
    ("EF ?", "There may be a small [side] pleural effusion.", "plain"),
    ("EF ?", "A small [side] pleural effusion is likely present.", "neg_post"),
    ("PN +", "RLL PNA.", "synonym"),
    ("PN ?", "Clinical correlation for pneumonia is recommended.", "plain"),
    ("ED ?", "Bilateral perihilar opacities likely representing edema.", "plain"),
    ("ED ?", "Mildly increased interstitial markings may reflect chronic lung disease or mild interstitial edema.", "descriptor"),
    ("ED 0", "No overt pulmonary edema.", "plain"),
    ("ED +", "Resolving pulmonary edema.", "comparison"),
    ("ED +", "Minimal residual interstitial edema.", "comparison"),
    ("CM +", "The cardiac silhouette remains enlarged{|, unchanged}.", "comparison"),
    ("CM +", "Stable mild enlargement of the cardiac silhouette.", "comparison"),
    ("CM + ED 0", "Mild cardiomegaly is unchanged, with no pulmonary edema.", "comparison"),
    ("CM 0", "Cardiac silhouette size is within normal limits.", "neg_post"),
    ("CM 0", "Cardiomediastinal silhouette within normal limits for appearance.", "neg_post"),
    ("FX 0", "No acute fracture, dislocation or destructive osseous lesion.", "plain"),
    ("FX +", "Osseous structures are notable for old healed [side] rib fractures.", "plain"),
    ("FX +", "Fractures of the [side] 5th and 6th ribs, age indeterminate.", "hedge_axis"),
    ("SC +", "Mild scoliosis convex to the right.", "synonym"),
    ("SC +", "Lateral curvature of the thoracolumbar spine.", "synonym"),
    ("SC +", "Dextroscoliotic curvature of the thoracic spine.", "synonym"),
    ("SC + FX +", "Mild dextroscoliosis and old healed [side] rib fractures.", "plain"),
    ("", "Straightening of the normal thoracic kyphosis.", "synonym"),
    ("GR +", "Calcified lymph nodes in the right hilum consistent with prior granulomatous disease.", "plain"),
    ("GR +", "Tiny calcified granuloma in the [lobe].", "plain"),
    ("HE ?", "Retrocardiac air-fluid level, likely a hiatal hernia.", "plain"),
    ("HE +", "Large hiatal hernia with much of the stomach in the chest.", "plain"),
    ("PX +", "Interval decrease in the size of the [side] pneumothorax.", "comparison"),
    ("PX 0", "No significant residual pneumothorax.", "plain"),
    ("AT +", "Subsegmental atelectasis in the lingula.", "plain"),
    ("AT ? PN ?", "New left basilar opacity may reflect atelectasis, aspiration, or pneumonia.", "plain"),
    ("AT ? PN ?", "There is a left retrocardiac opacity that silhouettes the medial left hemidiaphragm and could represent atelectasis or pneumonia.", "plain"),
    ("AT ? CO ?", "Retrocardiac opacity likely represents atelectasis, although consolidation cannot be excluded.", "plain"),
    ("PN ?", "Findings concerning for multifocal pneumonia.", "plain"),
    ("PN 0", "No acute cardiopulmonary process. Specifically, no pneumonia.", "plain"),
    ("PN _", "Residual scarring from prior pneumonia in the [lobe].", "history"),
    ("PN _", "Stable scarring at the lung bases from prior infection.", "history"),
    ("PN _", "Pleural thickening related to prior infection.", "history"),
    ("PN _", "Post-infectious scarring in the [lobe].", "history"),
    ("EM +", "Chronic lung changes consistent with emphysema.", "plain"),
    ("EM +", "Emphysematous changes at the apices.", "plain"),
    ("", "Hyperexpanded lungs with flattening of the hemidiaphragms, consistent with COPD.", "descriptor"),
    ("", "The lungs are hyperinflated with biapical pleural thickening.", "descriptor"),
    ("NO 0", "There are no nodules or masses.", "plain"),
    ("PX 0", "There is no visible pneumothorax.", "plain"),
    ("CO 0 PX 0 EF 0", "No focal consolidation, pneumothorax or large pleural effusion.", "neg_scope"),
    ("", "The XXXX examination consists of frontal and lateral radiographs of the chest.", "filler"),
    ("", "Stable postsurgical changes.", "filler"),
    ("", "Elevation of the right hemidiaphragm.", "filler"),
    ("", "Lung volumes are low, which accentuates the bronchovascular markings.", "filler"),
]

# Written in one sitting after the rules above were settled, and scored once before any change to
# the labeler (4 of 100 wrong, against 17 for the labeler before the issue); kept as written
# (the annotations fixed where the annotator had left out a finding the sentence names).
FRESH = [
    ('CM ?/+', 'The heart is top-normal to mildly enlarged.', "fresh"),
    ('CM ?/+', 'Cardiac silhouette is upper normal in size.', "fresh"),
    ('CM 0', 'Heart size is normal given the AP technique.', "fresh"),
    ('CM +', 'Heart is enlarged, likely exaggerated by low lung volumes.', "fresh"),
    ('CM +', 'Moderate enlargement of the cardiac silhouette is unchanged since ___.', "fresh"),
    ('CM 0', 'Cardiomediastinal and hilar contours are within normal limits.', "fresh"),
    ('CM +', 'Cardiomegaly, which is accentuated by the AP projection.', "fresh"),
    ('CM 0', 'The cardiac, mediastinal and hilar contours appear unchanged and within normal limits.', "fresh"),
    ('CM +', 'Severe enlargement of the cardiac silhouette is again demonstrated.', "fresh"),
    ('CM ?', 'The heart may be slightly enlarged but this may be due to the AP technique.', "fresh"),
    ('EF +', 'Small bilateral pleural effusions, slightly larger on the left.', "fresh"),
    ('EF +', 'Bilateral pleural effusions have increased in size.', "fresh"),
    ('EF 0', 'No large pleural effusion is seen, although the left costophrenic angle is excluded from the field of view.', "fresh"),
    ('EF ?', 'Left costophrenic angle is blunted which could be due to small effusion or scarring.', "fresh"),
    ('EF + AT +', 'Persistent moderate right pleural effusion with associated compressive atelectasis.', "fresh"),
    ('EF 0', 'The left pleural effusion has completely resolved.', "fresh"),
    ('EF ?', 'A small left effusion is likely present, layering posteriorly.', "fresh"),
    ('EF 0', 'No pleural effusion on either side.', "fresh"),
    ('AT +', 'Minimal left basilar atelectasis is unchanged.', "fresh"),
    ('AT ?', 'Patchy opacities at the lung bases likely reflect atelectasis.', "fresh"),
    ('AT +', 'There is persistent collapse of the left lower lobe.', "fresh"),
    ('AT 0', 'Lung volumes are normal without atelectasis.', "fresh"),
    ('AT ? PN ?', 'Increased left basilar opacity may reflect atelectasis, though pneumonia cannot be excluded.', "fresh"),
    ('AT +', 'Platelike atelectasis is noted in the left mid lung.', "fresh"),
    ('ED +', 'Moderate pulmonary edema is slightly improved.', "fresh"),
    ('ED +/_', 'There is mild pulmonary vascular engorgement.', "fresh"),
    ('ED 0/_', 'Pulmonary vasculature is not engorged.', "fresh"),
    ('ED + EF +', 'Mild interstitial pulmonary edema with small bilateral effusions.', "fresh"),
    ('ED +/_', 'Pulmonary venous pressure is elevated.', "fresh"),
    ('ED ?', 'Hazy opacification of both lungs may reflect pulmonary edema.', "fresh"),
    ('ED 0', 'There is no evidence of pulmonary vascular congestion or overt pulmonary edema.', "fresh"),
    ('ED +/_', 'Upper zone vascular redistribution.', "fresh"),
    ('ED +', 'Pulmonary edema has worsened.', "fresh"),
    ('PX +', 'Small right apical pneumothorax measuring 1.2 cm is slightly smaller than on the prior study.', "fresh"),
    ('PX 0', 'No pneumothorax is demonstrated.', "fresh"),
    ('PX +', 'Tiny left apical pneumothorax is again visualized.', "fresh"),
    ('PX 0', 'No appreciable pneumothorax.', "fresh"),
    ('PX ?', 'Possible small left apical pneumothorax, not clearly seen on the prior study.', "fresh"),
    ('PX 0', 'There is no evidence of pneumothorax status post removal of the left chest tube.', "fresh"),
    ('PX +', 'The left basilar pneumothorax has increased in size.', "fresh"),
    ('PN +', 'Right lower lobe pneumonia has improved but not resolved.', "fresh"),
    ('PN ?', 'Right lower lobe opacity could represent aspiration or pneumonia.', "fresh"),
    ('PN 0 CO 0', 'No focal consolidation concerning for pneumonia.', "fresh"),
    ('PN + CO +', 'Left lower lobe consolidation compatible with pneumonia.', "fresh"),
    ('PN ? AT ?', 'Bibasilar opacities, atelectasis versus early pneumonia.', "fresh"),
    ('PN 0', 'No radiographic findings to suggest pneumonia.', "fresh"),
    ('PN ?', 'Pneumonia in the right lower lobe cannot be excluded in the appropriate clinical setting.', "fresh"),
    ('PN _', 'Scarring in the right upper lobe from old tuberculosis.', "fresh"),
    ('PN 0', 'There is no evidence of pneumonia on this study.', "fresh"),
    ('PN +', 'Worsening multifocal pneumonia.', "fresh"),
    ('CO +', 'Right middle lobe airspace consolidation.', "fresh"),
    ('CO 0', 'No focal airspace consolidation is seen.', "fresh"),
    ('CO ?', 'Subtle increased opacity at the right base may represent early consolidation.', "fresh"),
    ('CO +', 'There is consolidation at the left base with air bronchograms.', "fresh"),
    ('CO 0 ED 0', 'The lungs are clear without consolidation or edema.', "fresh"),
    ('NO +', 'A 9 mm nodule in the left upper lobe is new since ___.', "fresh"),
    ('NO +', 'Small right upper lobe pulmonary nodule is unchanged.', "fresh"),
    ('NO ?', 'Nodular opacity in the right mid lung which may be a nipple shadow; repeat radiograph with nipple markers is recommended.', "fresh"),
    ('NO ?', 'Possible 1 cm nodule projecting over the left 4th anterior rib.', "fresh"),
    ('NO 0', 'No suspicious pulmonary nodules.', "fresh"),
    ('GR +', 'Calcified 5 mm nodule in the left lower lobe, likely a granuloma.', "fresh"),
    ('NO 0', 'Nodular density in the right lower lung represents the right nipple.', "fresh"),
    ('NO +', 'Multiple bilateral pulmonary nodules are again seen.', "fresh"),
    ('GR +', 'Small calcified granulomas in the right upper lobe are stable.', "fresh"),
    ('GR +', 'There are a few scattered calcified granulomas.', "fresh"),
    ('GR +', 'Calcified granuloma in the left midlung.', "fresh"),
    ('GR +', 'Stigmata of prior granulomatous disease.', "fresh"),
    ('EM +', 'Severe emphysema with bullous changes.', "fresh"),
    ('EM +', 'Lungs are hyperinflated with emphysematous changes in the upper lobes.', "fresh"),
    ('EM _', 'Hyperinflated lungs.', "fresh"),
    ('EM _', 'Lungs are hyperexpanded, suggesting underlying COPD.', "fresh"),
    ('EM _', 'Flattening of the hemidiaphragms consistent with chronic obstructive lung disease.', "fresh"),
    ('EM _', 'Extensive subcutaneous emphysema in the neck and chest wall.', "fresh"),
    ('EM ?', 'Hyperlucency of the upper lobes may indicate emphysema.', "fresh"),
    ('FX +', 'Multiple healed left rib fractures.', "fresh"),
    ('FX +', 'Old right clavicular fracture.', "fresh"),
    ('FX +', 'Mild compression fracture of T12, age-indeterminate.', "fresh"),
    ('FX 0', 'No displaced fractures are identified.', "fresh"),
    ('FX +', 'Acute displaced fracture of the left 7th rib.', "fresh"),
    ('FX ?', 'Possible nondisplaced fracture of the right 6th rib.', "fresh"),
    ('FX _', 'Fractured and displaced sternal wire.', "fresh"),
    ('FX +', 'Healed fracture of the right 5th rib with callus formation.', "fresh"),
    ('FX +', 'Old healed fractures of the left posterior ribs.', "fresh"),
    ('FX +', 'Deformity of the left 6th rib consistent with old fracture.', "fresh"),
    ('HE +', 'Small hiatus hernia.', "fresh"),
    ('HE +', 'Hiatal hernia is present.', "fresh"),
    ('HE ?', 'Retrocardiac opacity with an air-fluid level may represent a hiatal hernia.', "fresh"),
    ('HE +', 'Moderate-sized hiatal hernia, unchanged.', "fresh"),
    ('SC +', 'Mild thoracolumbar levoscoliosis.', "fresh"),
    ('SC +', 'There is a mild dextroconvex scoliosis.', "fresh"),
    ('SC +', 'Scoliosis of the thoracic spine convex to the right.', "fresh"),
    ('SC +', 'Curvature of the spine.', "fresh"),
    ('SC +', 'Moderate S-shaped curvature of the thoracolumbar spine.', "fresh"),
    ('SC _', 'Thoracic kyphosis.', "fresh"),
    ('SC +', 'Thoracic spine curves to the right.', "fresh"),
    ('CM 0 EF 0 PX 0', 'Heart size is normal. No pleural effusion or pneumothorax is seen.', "fresh"),
    ('CO 0 EF 0 PX 0 ED 0', 'There is no focal consolidation, pleural effusion, pneumothorax, or pulmonary edema.', "fresh"),
    ('PN 0 CO 0', 'No focal consolidation to suggest pneumonia is identified.', "fresh"),
    ('ED +/_ CM +', 'Cardiomegaly with mild pulmonary vascular congestion, consistent with CHF.', "fresh"),
    ('EF + AT +', 'Small left pleural effusion with left basilar atelectasis.', "fresh"),
]

BANK = FRESH + MORE + CARDIO + EFFUSION + ATELECTASIS + EDEMA + PNEUMOTHORAX + PNEUMONIA + CONSOLIDATION + NODULE \
    + EMPHYSEMA + FRACTURE + GRANULOMA + HERNIA + SCOLIOSIS + FILLER

# Indication / history / comparison lines: every finding word in them is about the request.
INDICATION_IU = [
    "XXXX-year-old male with chest pain.", "XXXX-year-old female with cough and fever.",
    "XXXX with history of pneumonia.", "Positive PPD.", "Shortness of breath, history of CHF.",
    "Preoperative evaluation.", "Follow-up pneumothorax.", "Rule out pneumonia.",
    "Fall, evaluate for rib fractures.", "History of COPD and emphysema.", "XXXX XXXX, cough.",
    "Evaluate for pleural effusion.", "History of lung nodule.", "Dyspnea. History of cardiomegaly.",
    "XXXX pain after XXXX.", "Hypertension.", "Pneumonia.", "Chest pain, history of hiatal hernia.",
    "XXXX-year-old with scoliosis and back pain.", "Congestive heart failure.", "Tuberculosis exposure.",
]
INDICATION_MIMIC = [
    "___ year old woman with history of CHF, now with increasing shortness of breath, evaluate for pulmonary edema.",
    "___M with fever and cough, r/o PNA.",
    "___F s/p fall with left rib pain, evaluate for fracture.",
    "___ year old man s/p left chest tube placement for pneumothorax, evaluate for residual pneumothorax.",
    "History of lung nodule, follow-up.",
    "___ year old woman with pleural effusion, status post thoracentesis.",
    "___ with hypoxia, evaluate for pneumonia or edema.",
    "___ year old man with known right lower lobe pneumonia, assess for interval change.",
    "___F with COPD exacerbation.",
    "Intubated patient, evaluate ET tube placement.",
    "___M with chest pain and shortness of breath.",
    "___ year old woman with history of aspiration pneumonia and new fever.",
    "Preop.", "___ with CHF and worsening edema.", "Trauma. Evaluate for pneumothorax and rib fractures.",
    "___ year old man with atelectasis on prior film, follow up.", "___F with hiatal hernia and cough.",
]
COMPARISON = [
    "None.", "[ph].", "Chest radiograph from [ph].", "Prior study from [ph] showing right lower lobe pneumonia.",
    "[ph] chest radiograph, which demonstrated a large left pleural effusion.", "PA and lateral chest [ph].",
    "CT chest [ph] showing a 6 mm right upper lobe nodule.", "No prior studies.", "Multiple prior radiographs, most recent [ph].",
]
TECHNIQUE = ["Chest PA and lateral.", "Portable AP chest radiograph.", "Frontal and lateral views of the chest.",
             "AP upright and lateral views of the chest.", "Single frontal view of the chest."]
NORMAL_IMPRESSION = ["No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.",
                     "No acute disease.", "Normal chest.", "No active disease.", "No acute intrathoracic process.",
                     "No acute cardiopulmonary findings.", "Negative chest."]

# ---------------------------------------------------------------- parsing and filling

def parse_labels(spec):
    """'CM +', 'ED +/_', 'CM ?/+' -> (chexpert, strict) dicts of label -> 1/0/-1 (None dropped)."""
    c, s = {}, {}
    toks = spec.split()
    assert len(toks) % 2 == 0, spec
    for code, v in zip(toks[::2], toks[1::2]):
        cv, sv = (v.split("/") + [None])[:2]
        sv = cv if sv is None else sv
        name = CODES[code]
        if VAL[cv] is not None:
            c[name] = VAL[cv]
        if VAL[sv] is not None:
            s[name] = VAL[sv]
    return c, s


ORD = ["3rd", "4th", "5th", "6th", "7th", "8th", "9th", "10th"]
LOBES = ["right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe", "left lower lobe", "lingula"]
SIZES = ["4 mm", "6 mm", "8 mm", "1.2 cm", "9 mm", "5 mm", "1 cm", "7 mm", "1.5 cm", "2 cm", "3 mm"]


def fill(tpl, rng, ph):
    def alt(m):
        return rng.choice(m.group(1).split("|"))
    t = re.sub(r"\{([^{}]*)\}", alt, tpl)
    side = rng.choice(["right", "left"])
    subs = {
        "[side]": lambda: side,
        "[Side]": lambda: side.capitalize(),
        "[lobe]": lambda: rng.choice(LOBES),
        "[Lobe]": lambda: rng.choice(LOBES).capitalize(),
        "[size]": lambda: rng.choice(SIZES),
        "[Size]": lambda: rng.choice(SIZES),
        "[rib]": lambda: f"{rng.choice(['right', 'left'])} {rng.choice(['', 'posterior ', 'anterior ', 'lateral '])}{rng.choice(ORD)}",
        "[n]": lambda: rng.choice(["3", "3.5", "4", "4.5", "5", "2.5"]),
        "[tv]": lambda: rng.choice(["T6", "T7", "T8", "T9", "T10", "T11", "T12", "L1"]),
        "[ph]": lambda: ph,
    }
    for k, f in subs.items():
        while k in t:
            t = t.replace(k, f(), 1)
    t = t.replace("lingula consolidation", "lingular consolidation").replace("Lingula pneumonia", "Lingular pneumonia")
    t = t.replace("lingula pneumonia", "lingular pneumonia").replace("Lingula consolidation", "Lingular consolidation")
    t = t.replace("lingula nodule", "lingular nodule").replace("Lingula opacity", "Lingular opacity")
    t = t.replace("lingula opacity", "lingular opacity")
    t = re.sub(r" +", " ", t).replace(" ,", ",").replace(" .", ".")
    return t[0].upper() + t[1:] if t and t[0].islower() else t


def merge(acc, labels):
    """Aggregate as a curator reads a whole report: present beats uncertain beats absent."""
    rank = {0: 0, -1: 1, 1: 2}
    for k, v in labels.items():
        if k not in acc or rank[v] > rank[acc[k]]:
            acc[k] = v


def compatible(acc, labels):
    return all(acc.get(k, v) == v for k, v in labels.items())


LUNG = {"Atelectasis", "Edema", "Pneumonia", "Consolidation", "Nodule"}
ACUTE = {"Pleural Effusion", "Atelectasis", "Edema", "Pneumothorax", "Pneumonia", "Consolidation", "Cardiomegaly", "Nodule", "Fracture"}

# ---------------------------------------------------------------- cases

def sentence_cases(rng):
    out = []
    seen = set()
    for labels_spec, tpl, cls in BANK:
        c, s = parse_labels(labels_spec)
        n_alts = 1
        for m in re.finditer(r"\{([^{}]*)\}", tpl):
            n_alts *= len(m.group(1).split("|"))
        slots = len(re.findall(r"\[(side|Side|lobe|Lobe|size|Size|rib|n|tv|ph)\]", tpl))
        want = min(4, max(1, n_alts + slots))
        for _ in range(want * 3):
            if want == 0:
                break
            style = rng.choice(["iu", "iu", "mimic", "mimic", "plain"])
            ph = "XXXX" if style == "iu" else "___"
            t = fill(tpl, rng, ph)
            if t in seen:
                continue
            seen.add(t)
            out.append({"kind": "sentence", "style": style, "classes": cls.split(), "text": t,
                        "labels": c, "strict": s})
            want -= 1
    # Short section-bearing cases: a finding word in the indication or comparison is no label.
    for i in range(90):
        style = rng.choice(["iu", "mimic"])
        ph = "XXXX" if style == "iu" else "___"
        ind = fill(rng.choice(INDICATION_IU if style == "iu" else INDICATION_MIMIC), rng, ph)
        unit = rng.choice([u for u in BANK if "history" not in u[2]])
        c, s = parse_labels(unit[0])
        body = fill(unit[1], rng, ph)
        if style == "iu":
            head = rng.choice(["Indication", "History", "Clinical history"])
            text = f"{head}: {ind} Findings: {body}"
        else:
            head = rng.choice(["INDICATION", "HISTORY", "CLINICAL HISTORY", "REASON FOR EXAMINATION"])
            text = f"{head}: {ind}\n\nFINDINGS: {body}"
        if text in seen:
            continue
        seen.add(text)
        out.append({"kind": "sentence", "style": style, "classes": ["section"] + unit[2].split(), "text": text,
                    "labels": c, "strict": s})
    return out


def is_abnormal(unit):
    c, st = parse_labels(unit[0])
    cls = set(unit[2].split())
    return any(v != 0 for v in list(c.values()) + list(st.values())) or bool(
        cls & {"descriptor", "nodule_mimic", "device_fracture", "soft_tissue", "mimic", "history", "synonym"})


def pick(rng, pool, n, acc_c, acc_s):
    """Chooses `n` phrases of `pool` consistent with the labels so far (and each other)."""
    chosen = []
    for _ in range(400):
        if len(chosen) >= n:
            break
        unit = rng.choice(pool)
        if unit in chosen:
            continue
        c, s = parse_labels(unit[0])
        cls = unit[2].split()
        if not (compatible(acc_c, c) and compatible(acc_s, s)):
            continue
        # Each finding is stated once in the findings (the impression may restate it).
        if any(k in acc_c or k in acc_s for k in list(c) + list(s)):
            continue
        # "The lungs are clear" / "no acute process" only where nothing says otherwise, and
        # nothing is added after them that would.
        if "lungs" in cls and any(acc_c.get(k) in (1, -1) or acc_s.get(k) in (1, -1) for k in LUNG):
            continue
        if "normal" in cls and any(acc_c.get(k) in (1, -1) or acc_s.get(k) in (1, -1) for k in ACUTE):
            continue
        chosen.append(unit)
        merge(acc_c, c)
        merge(acc_s, s)
    return chosen


def anatomy_order(text):
    t = text.lower()
    for key, words in [(0, ["heart", "cardi", "mediastin"]), (5, ["pleural", "pneumothorax", "costophrenic", "effusion"]),
                       (6, ["rib", "spine", "osseous", "bone", "clavic", "sternal", "sternotomy", "fractur", "scolio",
                            "curvature", "kyph", "bony"]),
                       (3, ["lung", "lobe", "edema", "pneumonia", "consolidation", "atelecta", "opacit", "nodul",
                            "granulom", "emphysem", "congest", "vascula", "interstitial", "hyper"])]:
        if any(w in t for w in words):
            return key
    return 4


# Words that place a finding: an impression reworded with another phrase must not move it.
SITE = r"\[|left|right|bilateral|both|lobe|base|apic|retrocardiac|lingul|hilar|upper|lower|rib|clavic|T\d|trace|tiny|small|large|moderate"


def report_case(rng, k):
    style = "iu" if k % 2 == 0 else "mimic"
    ph = "XXXX" if style == "iu" else "___"
    acc_c, acc_s = {}, {}
    abnormal = [u for u in BANK if is_abnormal(u)]
    normal_pool = [u for u in BANK if not is_abnormal(u)]
    n_ab = 0 if rng.random() < 0.22 else rng.choice([1, 1, 2, 2, 2, 3, 3, 4])
    units = pick(rng, abnormal, n_ab, acc_c, acc_s)
    units += pick(rng, normal_pool, rng.randint(2, 5), acc_c, acc_s)
    filled = sorted(((anatomy_order(u[1]), rng.random(), u, fill(u[1], rng, ph)) for u in units),
                    key=lambda x: (x[0], x[1]))
    findings = [f for _, _, _, f in filled]
    classes = set()
    for u in units:
        classes.update(u[2].split())
    # Impression: restate up to three abnormal phrases, as written or in another wording of the
    # same labels that names no site (so that the sites agree).
    imp = []
    labelled = [x for x in filled if any(v != 0 for v in parse_labels(x[2][0])[0].values())]
    unlabelled = [x for x in filled if is_abnormal(x[2]) and x not in labelled and rng.random() < 0.3]
    for _, _, u, text in (labelled + unlabelled)[: rng.randint(1, 3)]:
        same = [v for v in BANK if parse_labels(v[0]) == parse_labels(u[0]) and v is not u and v[0]
                and not re.search(SITE, v[1], re.I) and not re.search(SITE, text, re.I)]
        imp.append(fill(rng.choice(same)[1], rng, ph) if same and rng.random() < 0.5 else text)
    acute = any(acc_c.get(kk) in (1, -1) or acc_s.get(kk) in (1, -1) for kk in ACUTE)
    if not imp:
        imp = [rng.choice(NORMAL_IMPRESSION) if not acute else findings[0]]
    elif not acute and rng.random() < 0.4:
        imp.insert(0, rng.choice(NORMAL_IMPRESSION))
    ind = fill(rng.choice(INDICATION_IU if style == "iu" else INDICATION_MIMIC), rng, ph)
    comp = fill(rng.choice(COMPARISON), rng, ph)
    classes.add("section")
    if style == "iu":
        parts = []
        if rng.random() < 0.7:
            parts.append(f"Comparison: {comp}")
        if rng.random() < 0.9:
            parts.append(f"Indication: {ind}")
        parts.append("Findings: " + " ".join(findings))
        if len(imp) > 1 and rng.random() < 0.5:
            parts.append("Impression: " + " ".join(f"{i + 1}. {x}" for i, x in enumerate(imp)))
        else:
            parts.append("Impression: " + " ".join(imp))
        text = rng.choice(["\n", " ", "\n\n"]).join(parts)
    else:
        lines = ["                                 FINAL REPORT"]
        lines.append(f" EXAMINATION:  {rng.choice(['CHEST (PA AND LAT)', 'CHEST (PORTABLE AP)', 'CHEST (PRE-OP PA AND LAT)'])}")
        lines.append("")
        lines.append(" INDICATION:  " + wrap_mimic(ind, rng))
        lines.append("")
        lines.append(f" TECHNIQUE:  {rng.choice(TECHNIQUE)}")
        lines.append("")
        lines.append(f" COMPARISON:  {comp}")
        lines.append("")
        lines.append(" FINDINGS: ")
        lines.append(" ")
        lines.append(" " + wrap_mimic(" ".join(findings), rng))
        lines.append(" ")
        lines.append(" IMPRESSION: ")
        lines.append(" ")
        if len(imp) > 1 or rng.random() < 0.4:
            for i, x in enumerate(imp):
                lines.append(f" {i + 1}. " + wrap_mimic(x, rng))
        else:
            lines.append(" " + wrap_mimic(imp[0], rng))
        text = "\n".join(lines)
    return {"kind": "report", "style": style, "classes": sorted(classes), "text": text,
            "labels": acc_c, "strict": acc_s}


def wrap_mimic(text, rng):
    width = rng.choice([66, 70, 72, 76])
    return "\n ".join(textwrap.wrap(text, width=width))


def main():
    rng = random.Random(25)
    cases = sentence_cases(rng)
    reports = []
    seen = set()
    k = 0
    while len(reports) < 240:
        r = report_case(rng, k)
        k += 1
        if r["text"] not in seen:
            seen.add(r["text"])
            reports.append(r)
    out = Path(__file__).with_name("labeler_corpus.jsonl")
    with out.open("w") as f:
        for i, c in enumerate(cases + reports):
            prefix = "s" if c["kind"] == "sentence" else "r"
            rec = {"id": f"{prefix}{i:04d}", **c}
            # `strict` lists only the labels that differ from `labels` (null: not mentioned).
            diff = {}
            for name in sorted(set(c["labels"]) | set(c["strict"])):
                if c["labels"].get(name) != c["strict"].get(name):
                    diff[name] = c["strict"].get(name)
            rec["strict"] = diff
            f.write(json.dumps(rec) + "\n")
    n_s = sum(c["kind"] == "sentence" for c in cases)
    print(f"{out}: {n_s} sentences, {len(reports)} reports")


if __name__ == "__main__":
    main()
