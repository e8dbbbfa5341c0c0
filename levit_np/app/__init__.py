"""The application layer: what levit-np does with a model, apart from the model itself.

    prediction   predict(images): pictures in, top-k labels out; the per-process model cache
    labelling    a collection labelled into a resumable JSONL file, with an optional embeddings .npy
    collection   the folder walk: the image files under the folders given
    workers      `predict --workers N`: the batches of one job on N processes of this machine
    distributed  the same job on a Dask cluster, one task and one JSONL file per shard
    cli          the `levit-np` command line

It uses the model layer (config, checkpoint, layers, backend, model, resize, hub, preprocessing, cores, checks,
fast/) and is never imported by it: only the package's front door reaches in (`levit_np.predict`, and
`python -m levit_np`). tests/test_layering.py checks that, and that no import among the package's modules goes
round in a cycle.
"""
