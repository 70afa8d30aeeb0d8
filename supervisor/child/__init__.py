"""The training child: the only part of the package that imports ultralytics and torch."""
