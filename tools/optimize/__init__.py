"""`chimera optimize`: walk-forward genome search and its overfitting guards."""
