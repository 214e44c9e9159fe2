"""What an index learns from its catalog: vector transforms, catalog adaptation, the verdict's
calibration, simulated shopper photos, the build's learning step and `vsearch tune`."""
