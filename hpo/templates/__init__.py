"""What ``hpo init NAME`` writes into a user's project: a study config and its objective."""
