"""Applications on top of the models: ``facefuse detect`` and ``facefuse embed`` on a user's photos.

    options.py  their options and checks, without torch (the command line parses with them first)
    files.py    finding and reading images (PIL), batching by size, the progress line
    outputs.py  what goes into --out: record and drawn names, drawing, records, resuming a folder
    run.py      the detection loop shared by both commands: models, threads, batches, timings
    detect.py   facefuse detect: one JSON record per image, annotated images
    embed.py    facefuse embed: ArcFace embeddings of the detected faces, their nearest faces
"""
