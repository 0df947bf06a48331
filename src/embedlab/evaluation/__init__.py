"""Inference and evaluation libraries the stages use: embedding, DISC search and scores, face pairs, decoder cosines."""
