"""The coordinator: decompose, route, stream and assemble, vote, synthesize, reward."""
