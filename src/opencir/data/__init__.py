"""Data: robust image loading, triplet formats, gallery readers, the miniature worlds."""
