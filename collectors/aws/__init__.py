"""AWS: prices, GPU instance inventory and events, Cost Explorer and billing exports (boto3)."""
