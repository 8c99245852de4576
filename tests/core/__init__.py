"""Tests of the pure core: allocation engine, safety guard, transitions, worked examples."""
