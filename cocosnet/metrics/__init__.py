"""Evaluation metrics: SWD and FID (sets), L1/PSNR/SSIM (paired), correspondence accuracy."""
