"""Writers: GeoParquet and QuPath GeoJSON."""
