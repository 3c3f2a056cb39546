"""The ``wsi-stnuc`` command line (installed as the ``wsi_stnuc_cli`` package)."""
