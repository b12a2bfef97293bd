# mouse-facelift: synchronized multi-camera mouse videos -> feed-forward 3D Gaussians (GS-LRM).
# This file only includes rules and names targets; each stage lives in rules/*.smk.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/body_model.smk"
include: "rules/demo.smk"
include: "rules/preprocess.smk"
include: "rules/synthetic.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"


rule all:
    input:
        "results/report.html",


rule preprocess:
    input:
        all_real_shards(),


rule train_mouse:
    # The main job: the demo (or your sessions) through preprocessing, synthetic pre-training,
    # real-data fine-tuning, evaluation and the report.
    input:
        expand("results/train/{experiment}/mouse/checkpoint.pt", experiment=experiments()),
        expand("results/eval/{experiment}/metrics.json", experiment=experiments()),
        "results/report.html",
