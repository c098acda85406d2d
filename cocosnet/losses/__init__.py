"""Loss terms (pure functions) and the VGG19 they use."""

from cocosnet.losses.terms import (
    LOSS_KEYS,
    alignment_loss,
    cycle_loss,
    gan_discriminator_loss,
    gan_feature_loss,
    gan_generator_loss,
    perceptual_loss,
    vgg_contextual_loss,
    vgg_feature_matching_loss,
    warp_loss,
    weighted_total,
)

__all__ = ["LOSS_KEYS", "alignment_loss", "cycle_loss", "gan_discriminator_loss", "gan_feature_loss",
           "gan_generator_loss", "perceptual_loss", "vgg_contextual_loss", "vgg_feature_matching_loss",
           "warp_loss", "weighted_total"]
