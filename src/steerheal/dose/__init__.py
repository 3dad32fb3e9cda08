"""dose: how hard to steer and what data that gives. iso-KL calibration, coherence filters, steered-vs-unsteered
preference pairs and the dose walk."""
