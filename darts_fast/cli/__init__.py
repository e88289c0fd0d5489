"""The ``darts-fast`` command line, apart from the library: ``main.py`` parses the arguments,
``search.py`` and ``train.py`` set up the two jobs, ``loop.py`` runs their epochs (``runtime.py``
sets up the process, ``resume.py`` opens and restores a run, ``stops.py`` words its stops),
``run_dir.py`` owns the run folder (``stored_run.py`` verifies one to resume), ``cifar10.py`` and
``datasets.py`` read the images, ``augmentation.py`` and ``loaders.py`` feed them, ``report.py``
logs and draws."""
