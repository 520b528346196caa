"""Developer tools outside the extension zip: the extension build, the demos and their sample scenes."""
