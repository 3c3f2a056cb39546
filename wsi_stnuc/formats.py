"""File and column names of external formats and of our own tables, in one place.

Every reader and writer refers to these names instead of spelling strings inline, so a
vendor renaming a file or column is a one-line change here.
"""

from __future__ import annotations


class Xenium:
    """10x Xenium output bundle (XOA 1.x - 3.x)."""

    CELLS_PARQUET = "cells.parquet"
    CELLS_CSV = "cells.csv.gz"
    NUCLEUS_BOUNDARIES = "nucleus_boundaries.parquet"
    NUCLEUS_BOUNDARIES_CSV = "nucleus_boundaries.csv.gz"
    CELL_BOUNDARIES = "cell_boundaries.parquet"
    CELL_BOUNDARIES_CSV = "cell_boundaries.csv.gz"
    MATRIX_H5 = "cell_feature_matrix.h5"
    MATRIX_MEX_DIR = "cell_feature_matrix"
    MATRIX_ZARR_ZIP = "cell_feature_matrix.zarr.zip"
    TRANSCRIPTS = "transcripts.parquet"
    EXPERIMENT = "experiment.xenium"
    MORPHOLOGY_FOCUS = "morphology_focus.ome.tif"
    HE_ALIGNMENT_SUFFIX = "he_imagealignment.csv"
    HE_IMAGE_SUFFIX = "he_image.ome.tif"

    # cells table
    CELL_ID = "cell_id"
    X_CENTROID = "x_centroid"
    Y_CENTROID = "y_centroid"
    CELL_AREA = "cell_area"
    NUCLEUS_AREA = "nucleus_area"
    TRANSCRIPT_COUNTS = "transcript_counts"
    CONTROL_PROBE_COUNTS = "control_probe_counts"
    CONTROL_CODEWORD_COUNTS = "control_codeword_counts"
    TOTAL_COUNTS = "total_counts"
    # boundary vertex tables
    VERTEX_X = "vertex_x"
    VERTEX_Y = "vertex_y"
    LABEL_ID = "label_id"
    # transcripts
    TX_X = "x_location"
    TX_Y = "y_location"
    TX_Z = "z_location"
    TX_FEATURE = "feature_name"
    TX_QV = "qv"
    TX_OVERLAPS_NUCLEUS = "overlaps_nucleus"
    # experiment.xenium keys
    PIXEL_SIZE = "pixel_size"
    PANEL_NAME = "panel_name"
    RUN_NAME = "run_name"
    DEFAULT_PIXEL_SIZE_UM = 0.2125
    # 10x HDF5 matrix layout
    H5_MATRIX = "matrix"
    H5_DATA = "data"
    H5_INDICES = "indices"
    H5_INDPTR = "indptr"
    H5_SHAPE = "shape"
    H5_BARCODES = "barcodes"
    H5_FEATURES = "features"
    H5_FEATURE_ID = "id"
    H5_FEATURE_NAME = "name"
    H5_FEATURE_TYPE = "feature_type"
    H5_GENOME = "genome"
    GENE_EXPRESSION = "Gene Expression"


class LabelCols:
    """Columns of a LabelSet (GeoParquet; geometry in H&E level-0 pixels)."""

    CELL_ID = "cell_id"
    GEOMETRY = "geometry"
    CELL_TYPE = "cell_type"
    IMAGE_CLASS = "image_class"
    CONFIDENCE = "confidence"
    WEIGHT = "weight"
    # optional: typing probability of each fine type (``type_prob_<type>``, from typing
    # methods that give probabilities) and their sums per image class (``prob_<class>``,
    # not renormalised: the shortfall from 1 is the share on types mapped to ``unknown``)
    TYPE_PROB_PREFIX = "type_prob_"
    CLASS_PROB_PREFIX = "prob_"
    # optional, from `wsi-stnuc review`: the QuPath object id (UUID) of each row, and where its
    # class comes from (ST typing, a pathologist's reclassification, a nucleus drawn in QuPath)
    OBJECT_ID = "object_id"
    SOURCE = "source"
    SOURCE_ST = "st"
    SOURCE_REVIEWED = "reviewed"
    SOURCE_MANUAL = "manual"

    @classmethod
    def class_probs(cls, class_names) -> list[str]:
        """The ``prob_<class>`` column names of ``class_names``, in their order."""
        return [f"{cls.CLASS_PROB_PREFIX}{name}" for name in class_names]


class NucleusCols:
    """Columns of a NucleusTable (inference output; geometry in level-0 pixels)."""

    NUCLEUS_ID = "nucleus_id"
    GEOMETRY = "geometry"
    CENTROID_X = "centroid_x"
    CENTROID_Y = "centroid_y"
    CLASS_ID = "class_id"
    CLASS_NAME = "class_name"
    DET_PROB = "det_prob"
    PROB_PREFIX = "prob_"
    AREA_UM2 = "area_um2"
    PERIMETER_UM = "perimeter_um"
    ECCENTRICITY = "eccentricity"
    SOLIDITY = "solidity"
    MEAN_H_OD = "mean_hematoxylin_od"
    MEAN_E_OD = "mean_eosin_od"
    TILE_ID = "tile_id"


class QuPath:
    """Keys of QuPath's GeoJSON (see docs/DESIGN.md, QuPath GeoJSON contract)."""

    OBJECT_TYPE = "objectType"
    DETECTION = "detection"
    CELL = "cell"
    ANNOTATION = "annotation"
    CLASSIFICATION = "classification"
    MEASUREMENTS = "measurements"
    NUCLEUS_GEOMETRY = "nucleusGeometry"
    IS_LOCKED = "isLocked"
    # our measurement tagging each object with the model that made it (24-bit, exact in
    # QuPath's float32 measurement lists); groovy/import_wsi_stnuc.groovy relies on it
    MODEL_TAG = "wsi_stnuc_model_id"
    CLASS_PROB_MEASUREMENT = "Probability: {}"

    @classmethod
    def class_prob_measurement(cls, class_name: str) -> str:
        """The readable QuPath measurement name of the ``prob_<class>`` column of a class."""
        return cls.CLASS_PROB_MEASUREMENT.format(class_name)


class Slide:
    """Metadata keys of slide readers."""

    OPENSLIDE_MPP_X = "openslide.mpp-x"
    OPENSLIDE_MPP_Y = "openslide.mpp-y"
    OPENSLIDE_VENDOR = "openslide.vendor"
    OPENSLIDE_OBJECTIVE = "openslide.objective-power"
    OME_ZARR_MULTISCALES = "multiscales"


class Cohort:
    """Files and columns of a cohort run's output folder (``inference.manifest``)."""

    MANIFEST = "manifest.csv"
    SUMMARY = "cohort_summary.csv"
    # the input manifest a user writes: path (required), mpp, name
    PATH = "path"
    MPP = "mpp"
    NAME = "name"
    # one output manifest row per slide, keyed by the slide's resolved path; ``name`` is the
    # stem of the slide's outputs (NAME.parquet, NAME.geojson[.zip], NAME.summary.json)
    MANIFEST_COLUMNS = (
        "name", "path", "size", "mtime_ns", "status", "error", "mpp", "mpp_source",
        "model", "settings_key", "parquet", "geojson", "summary", "n_nuclei",
        "tissue_area_mm2", "seconds", "finished",
    )  # fmt: skip
