"""DLRM built from a declared feature spec, batch building (KeyedJaggedTensor), checkpoint format."""
