from workflow_scripts.download import download_body_model
from workflow_scripts.entry._run import rule_logging

with rule_logging(snakemake):
    from pathlib import Path

    download_body_model(Path(snakemake.output[0]).parent, base_url=snakemake.params.base_url)
