"""Networks: domain alignment, hierarchical correspondence, generator, discriminator."""
