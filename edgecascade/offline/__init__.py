"""Offline work, run from the command line, never by a daemon: building the demo and text
model pairs, and calibrating and scoring a cascade (`edgecascade train`, `calibrate`,
`demo`'s first run). Imports torch and the training libraries where it needs them."""
