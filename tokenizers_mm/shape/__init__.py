"""3D shape tokenizer: point cloud -> multi-scale residual tokens -> occupancy field -> mesh (VAT, 3DShape2VecSet)."""
