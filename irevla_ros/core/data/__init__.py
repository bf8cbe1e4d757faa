"""Episode store, dataset format, manifests, signing, spool transport and the wire codec."""
