"""Second-order statistics: the Fisher, Kronecker statistics, the preconditioner, score variants."""
