# The built-in demo: the MAMMAL mouse walking in an arena, filmed by a 6-camera rig. Written as
# real videos + a DANNCE calibration; the ground truth is kept aside for evaluation only.


rule demo_recording:
    input:
        body_model="results/body_model/mammal_mouse.npz",
    output:
        videos=expand(DEMO_DIR + "/videos/cam{i}.mp4", i=range(1, config["demo"]["num_cameras"] + 1)),
        calibration=expand(DEMO_DIR + "/calibration/hires_cam{i}_params.mat", i=range(1, config["demo"]["num_cameras"] + 1)),
        ground_truth=DEMO_DIR + "/ground_truth.h5",
    params:
        demo=config["demo"],
    log:
        log_path("demo_recording"),
    benchmark:
        bench_path("demo_recording")
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    script:
        "../workflow_scripts/entry/demo_recording.py"
