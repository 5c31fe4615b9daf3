"""What tests/ and benchmarks/ both drive the project with, from outside the package.

``server``: start ``inference.py`` as a real process and watch it; ``hostile``: uploads that are
costly to decode or lie about their size; ``archive``: a zip of the Kaggle archive's layout.
The tests check behaviour with them and the benchmarks measure cost with the same ones.
Imports run one way: tests/ and benchmarks/ import this package; it imports neither, and
neither imports the other. The ``deepfake_detector`` package never imports it.
"""
