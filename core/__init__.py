"""What every layer shares: the validated configuration, retry policy, clock, logging, errors.

Layers, each importing only those below it (tests/test_boundaries.py)::

    node        the DICOM network, the CLI, the processes (serve, worker supervision)
    training    fits, evaluates and packages models
    inference   model packages, pipelines, the worker
    dicomio     DICOM in and out: headers, series -> arrays, result encoders
    storage     the index, the queue, the instance files
    core        configuration records and parser, retry policy, clock, errors
"""

__all__: list[str] = []
