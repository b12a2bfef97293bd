# The MAMMAL mouse body model: downloaded (pinned, verified) or taken from a local folder,
# then validated and converted once into results/body_model/mammal_mouse.npz.
from workflow_scripts.download import FILES as MAMMAL_FILES


rule download_body_model:
    output:
        expand("resources/mammal_mouse/{name}", name=list(MAMMAL_FILES)),
    params:
        base_url=config["body_model"]["base_url"],
    log:
        log_path("download_body_model"),
    benchmark:
        bench_path("download_body_model")
    threads: 1
    resources:
        mem_mb=512,
        runtime=30,
    conda:
        "../envs/preprocess.yaml"
    script:
        "../workflow_scripts/entry/download_body_model.py"


rule body_model:
    input:
        expand("{dir}/{name}", dir=body_model_dir(), name=list(MAMMAL_FILES)),
    output:
        "results/body_model/mammal_mouse.npz",
    params:
        directory=lambda w, input: os.path.dirname(input[0]),
    log:
        log_path("body_model"),
    benchmark:
        bench_path("body_model")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/render.yaml"
    script:
        "../workflow_scripts/entry/body_model.py"
