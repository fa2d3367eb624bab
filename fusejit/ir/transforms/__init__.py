"""IR -> IR transforms: autodiff, simplification and fusion, and the pass pipeline."""
