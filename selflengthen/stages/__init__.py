"""One module per stage of a round; each reads earlier artifacts and writes its own folder."""
