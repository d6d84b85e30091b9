"""Sample quality: IS, FID and KID in the feature space of TensorFlow's 2015 Inception graph
(`inception.py`, weights via `convert.py`) or, for the offline digits quick start, of a
small digits classifier (`digits_net.py`); `evaluator.Evaluator` ties them to a generator.
"""
