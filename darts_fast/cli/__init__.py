"""The ``darts-fast`` command line, apart from the library: ``main.py`` parses the arguments,
``search.py`` and ``train.py`` set up the two jobs, ``loop.py`` runs their epochs, ``run_dir.py``
owns the run folder, ``data.py`` feeds the images, ``report.py`` logs and draws."""
