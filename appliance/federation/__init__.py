"""Federation: appliances of different organisations enrol each other and compute together."""
