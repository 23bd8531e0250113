"""Sharing zoos: the catalogue of cards, download, the importers of public zoos, pack, and the
limits that make reading a stranger's archive safe (:mod:`zoo.hub.safety`)."""
