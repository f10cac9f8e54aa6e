"""What plugs into :mod:`qlab.core`: data sets, the model zoo, checkpoint and result stores."""
