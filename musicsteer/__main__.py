from musicsteer.cli import entry

entry()
