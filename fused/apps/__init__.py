"""Applications on top of the models: ``facefuse detect`` and ``facefuse embed`` on a user's photos.

    files.py    finding and reading images (PIL), batching by size, drawing, the progress line
    run.py      the detection loop shared by both commands: models, batches, records, timings
    detect.py   facefuse detect: one JSON record per image, annotated images
    embed.py    facefuse embed: ArcFace embeddings of the detected faces, their cosine similarities
"""
