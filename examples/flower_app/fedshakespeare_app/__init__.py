"""FedAvg on FedShakespeare with torch_grouper and Flower: a character model, one group per message."""
