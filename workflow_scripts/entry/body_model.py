from workflow_scripts.entry._run import rule_logging

with rule_logging(snakemake) as log:
    from workflow_scripts.body_model import load_body_model, save_npz

    model = load_body_model(snakemake.params.directory)
    save_npz(model, snakemake.output[0])
    log.info("MAMMAL mouse: %d vertices, %d faces, %d joints, texture: %s", model.vertices.shape[0], model.faces.shape[0],
             model.joints_rest.shape[0] if hasattr(model, "joints_rest") else -1, model.texture is not None)
